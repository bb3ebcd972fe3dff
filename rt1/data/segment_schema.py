"""On-disk schema of stage 1: RLDS episodes stored as segment HDF5 files.

One file per `episodes_per_segment` (`--episode-sec-len`) consecutive source episodes, named `{a}-{b}_episode.h5` for the
source episode range [a, b) (the original pipeline's naming). A filtered run (e.g. pick-object only)
keeps the same ranges and stores only the episodes its filter selects, so a file may hold fewer
episodes than its range, or none.

Every step is stored once (not once per 6-step window), and images are the JPEG bytes exactly as
they are in the RLDS TFRecords (no decode/re-encode). All step arrays are the episodes' steps
concatenated in order; `episodes/step_start` and `episodes/num_steps` cut them apart.

File layout (format_version 2):

    attrs:
        format               "rt1-segment"
        format_version       2 (1 was written by a stage 1 that could store episodes out of order:
                             refused, convert again)
        source_dataset       "fractal20220817_data/0.1.0"
        episode_range        int64 [a, b): the source episodes this file covers
        task_filter          name of the filter that selected episodes ("all", "pick", ...)
        num_episodes, num_steps
    episodes/                                  one row per stored episode, E rows
        source_index         int64 (E,)        position of the episode in the RLDS `train` split, in
                                               the canonical read order (`rt1.data.rlds_reader`)
        fingerprint          ascii (E,)        `episode_fingerprint`: 32 hex digits identifying the
                                               episode by content, kept by stage 2; checked by reruns
                                               and by stage 3 (no episode stored twice)
        step_start           int64 (E,)        first row of the episode in steps/*
        num_steps            int64 (E,)
        instruction          utf-8 string (E,) natural_language_instruction (constant per episode)
        language_embedding   float32 (E, 512)  natural_language_embedding (constant per episode)
    steps/                                     one row per step, T rows in all
        image                vlen uint8 (T,)   JPEG bytes of observation/image (256x320x3)
        is_first, is_last, is_terminal   bool (T,)
        reward               float32 (T,)
        action/<key>         float32 (T, dims); terminate_episode int32 (T, 3)
        observation/<key>    float32 (T, ...), every vector of the observation (rlds_spec.OBSERVATION_VECTORS)

Instruction and embedding are checked to be constant within each episode when written; an episode
whose values change is refused (`ValueError` naming the source episode) rather than stored wrongly.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from rt1.data.h5files import existing_output
from rt1.errors import RT1Error, one_line
from rt1.io import atomic_output
from rt1.rlds_spec import ACTION_SPEC, DATASET_NAME, DATASET_VERSION, EMBEDDING_DIM, OBSERVATION_VECTORS

FORMAT = "rt1-segment"
FORMAT_VERSION = 2
FILE_SUFFIX = "_episode.h5"
STEP_FLAGS = ("is_first", "is_last", "is_terminal")


class SegmentFormatError(RT1Error, ValueError):
    """A file is not a readable segment of the version this code reads."""


@dataclass
class Episode:
    """One RLDS episode as stored in a segment file; step arrays have T rows."""

    source_index: int
    instruction: str
    language_embedding: np.ndarray  # float32 (512,)
    images: list[bytes]  # JPEG bytes, T items
    actions: dict[str, np.ndarray]  # key -> (T, dims)
    observations: dict[str, np.ndarray]  # key -> (T, ...)
    is_first: np.ndarray  # bool (T,)
    is_last: np.ndarray
    is_terminal: np.ndarray
    reward: np.ndarray  # float32 (T,)
    fingerprint: str = ""  # computed from the content when not given (as read from a file)

    def __post_init__(self):
        if not self.fingerprint:
            self.fingerprint = self.content_fingerprint()

    @property
    def num_steps(self) -> int:
        return len(self.images)

    def content_fingerprint(self) -> str:
        return episode_fingerprint(self.instruction, self.actions, self.images[0] if self.images else b"")


def episode_fingerprint(instruction: str, actions: dict[str, np.ndarray], first_image: bytes) -> str:
    """32 hex digits identifying an episode by content: its instruction, every action, its first JPEG.

    Two different source episodes share a fingerprint only if they are the same demonstration stored
    twice, which is exactly what stage 3 refuses.
    """
    digest = hashlib.blake2b(digest_size=16)
    digest.update(instruction.encode("utf-8") + b"\0")
    for key in sorted(actions):
        value = np.ascontiguousarray(actions[key])
        digest.update(f"{key}:{value.dtype.str}:{value.shape}".encode())
        digest.update(value.data)
    digest.update(bytes(first_image))
    return digest.hexdigest()


@dataclass
class Segment:
    path: Path
    episode_range: tuple[int, int]
    task_filter: str
    episodes: list[Episode] = field(default_factory=list)


def segment_file_name(start: int, end: int) -> str:
    return f"{start}-{end}{FILE_SUFFIX}"


def write_segment(
    path: Path, episodes: list[Episode], episode_range: tuple[int, int], task_filter: str
) -> int:
    """Write `episodes` to `path` atomically; returns the number of bytes written."""
    path = Path(path)
    num_steps = sum(e.num_steps for e in episodes)
    starts = np.cumsum([0] + [e.num_steps for e in episodes])[:-1]
    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w", track_order=True) as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["source_dataset"] = f"{DATASET_NAME}/{DATASET_VERSION}"
            f.attrs["episode_range"] = np.asarray(episode_range, dtype=np.int64)
            f.attrs["task_filter"] = task_filter
            f.attrs["num_episodes"] = len(episodes)
            f.attrs["num_steps"] = num_steps

            ep = f.create_group("episodes")
            ep.create_dataset(
                "source_index", data=np.array([e.source_index for e in episodes], dtype=np.int64)
            )
            ep.create_dataset("fingerprint", data=np.array([e.fingerprint for e in episodes], dtype="S32"))
            ep.create_dataset("step_start", data=np.asarray(starts, dtype=np.int64))
            ep.create_dataset("num_steps", data=np.array([e.num_steps for e in episodes], dtype=np.int64))
            ep.create_dataset(
                "instruction", data=[e.instruction for e in episodes], dtype=h5py.string_dtype("utf-8")
            )
            ep.create_dataset(
                "language_embedding",
                dtype=np.float32,
                data=np.stack([e.language_embedding for e in episodes])
                if episodes
                else np.zeros((0, EMBEDDING_DIM), np.float32),
            )

            _write_steps(f.create_group("steps"), episodes, num_steps)
    return path.stat().st_size


def _write_steps(st: h5py.Group, episodes: list[Episode], num_steps: int) -> None:
    """The steps group: every episode's images, flags, rewards, actions and observation vectors, concatenated."""
    images = np.empty(num_steps, dtype=object)  # one write for all images: per-row writes are slow
    for row, jpeg in enumerate(jpeg for e in episodes for jpeg in e.images):
        images[row] = np.frombuffer(jpeg, dtype=np.uint8)
    st.create_dataset("image", data=images, dtype=h5py.vlen_dtype(np.uint8))

    def concat(arrays, shape, dtype):
        return np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros((0, *shape), dtype)

    for flag in STEP_FLAGS:
        st.create_dataset(flag, data=concat([getattr(e, flag) for e in episodes], (), bool))
    st.create_dataset("reward", data=concat([e.reward for e in episodes], (), np.float32))
    for key, spec in ACTION_SPEC.items():
        st.create_dataset(
            f"action/{key}", data=concat([e.actions[key] for e in episodes], spec.shape, spec.dtype)
        )
    for key, spec in OBSERVATION_VECTORS.items():
        st.create_dataset(
            f"observation/{key}",
            data=concat([e.observations[key] for e in episodes], spec.shape, spec.dtype),
        )


def open_segment(path: Path) -> h5py.File:
    """Open a segment read-only after checking it is one, of this format version."""
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise SegmentFormatError(f"{path}: not a readable HDF5 file ({e})") from None
    fmt, version = f.attrs.get("format"), f.attrs.get("format_version")
    if fmt != FORMAT:
        f.close()
        raise SegmentFormatError(f"{path}: not an rt1 segment file (format attribute {fmt!r})")
    if version != FORMAT_VERSION:
        f.close()
        raise SegmentFormatError(
            f"{path}: segment format_version {version}, this code reads {FORMAT_VERSION}"
        )
    return f


def read_segment(path: Path) -> Segment:
    """Read a whole segment file into memory (a segment holds ~20 episodes)."""
    with open_segment(path) as f:
        segment = Segment(
            Path(path), tuple(int(x) for x in f.attrs["episode_range"]), str(f.attrs["task_filter"])
        )
        ep, st = f["episodes"], f["steps"]
        images = st["image"][:]
        flags = {flag: st[flag][:] for flag in STEP_FLAGS}
        reward = st["reward"][:]
        actions = {k: st[f"action/{k}"][:] for k in ACTION_SPEC}
        observations = {k: st[f"observation/{k}"][:] for k in OBSERVATION_VECTORS}
        instructions = ep["instruction"].asstr()[:]
        embeddings = ep["language_embedding"][:]
        fingerprints = ep["fingerprint"][:]
        for i, (start, n) in enumerate(zip(ep["step_start"][:], ep["num_steps"][:])):
            rows = slice(int(start), int(start + n))
            segment.episodes.append(
                Episode(
                    source_index=int(ep["source_index"][i]),
                    instruction=str(instructions[i]),
                    language_embedding=embeddings[i],
                    images=[img.tobytes() for img in images[rows]],
                    actions={k: v[rows] for k, v in actions.items()},
                    observations={k: v[rows] for k, v in observations.items()},
                    reward=reward[rows],
                    fingerprint=fingerprints[i].decode(),
                    **{flag: v[rows] for flag, v in flags.items()},
                )
            )
    return segment


def stored_episodes(
    path: Path, episode_range: tuple[int, int], task_filter: str
) -> list[tuple[int, str]] | None:
    """`(source_index, fingerprint)` of each episode a finished segment holds, or None if `path` is absent.

    A rerun compares these with what it reads from the source before skipping the segment. A file
    under a segment's name that is not a finished segment of this range, filter and format version
    raises `SegmentFormatError`: it is never overwritten silently.
    """
    f = existing_output(path, FORMAT, "an rt1 segment", SegmentFormatError)
    if f is None:
        return None
    with f:
        version = f.attrs.get("format_version")
        if version != FORMAT_VERSION:
            raise SegmentFormatError(
                f"{path} is a segment of format_version {version}, this code writes {FORMAT_VERSION} (version 1 "
                "could hold episodes out of order): delete the old segments and convert again"
            )
        try:
            found_filter = str(f.attrs["task_filter"])
            found_range = tuple(int(x) for x in f.attrs["episode_range"])
            ep = f["episodes"]
            stored = [(int(i), fp.decode()) for i, fp in zip(ep["source_index"][:], ep["fingerprint"][:])]
        except (KeyError, OSError, ValueError, TypeError) as e:
            raise SegmentFormatError(
                f"{path} has a segment's format attributes but is not a complete segment "
                f"({one_line(e)}); move it away or use another --out-dir"
            ) from None
        if found_filter != task_filter:
            raise SegmentFormatError(
                f"{path} was written with task filter '{found_filter}', this run uses "
                f"'{task_filter}': use a separate --out-dir per filter"
            )
        if found_range != tuple(episode_range):
            raise SegmentFormatError(
                f"{path} covers source episodes {list(found_range)}, this run's segment of that "
                f"name covers {list(episode_range)}: use the same --episode-sec-len as the "
                "run that wrote it, or another --out-dir"
            )
        return stored
