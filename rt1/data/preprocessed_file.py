"""Reading stage 2's preprocessed files (layout: `rt1.data.preprocessed_schema`): whole episodes for plots and
evaluation, 6-step training windows for the loader (`rt1.data.dataset`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rt1.data.images import ImageDecodeError, decode_jpeg
from rt1.data.preprocessed_schema import PreprocessedEpisode, PreprocessedFormatError, open_preprocessed
from rt1.errors import RT1Error, one_line
from rt1.rlds_spec import ACTION_SPEC


@dataclass(frozen=True)
class EpisodeTable:
    """The `episodes/` table of one file, in memory."""

    source_index: np.ndarray
    fingerprint: list[str]
    step_start: np.ndarray
    num_steps: np.ndarray
    instruction: list[str]

    def __len__(self) -> int:
        return len(self.source_index)

    def episode_of_row(self, row: int) -> int:
        """The episode holding step row `row`, or -1 if the row is outside every episode."""
        if len(self.step_start) == 0:
            return -1
        i = int(np.searchsorted(self.step_start, row, side="right")) - 1
        if i < 0 or row >= self.step_start[i] + self.num_steps[i]:
            return -1
        return i


class WindowError(RT1Error, ValueError):
    """A window that is not inside one episode of the file."""


class PreprocessedFile:
    """Read access to one preprocessed file: whole episodes (plots, evaluation) or training windows.

    Opens and checks the file at construction; keeps the handle and the small episode table.
    Use as a context manager or call `close()`. Not to be shared across processes.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._f = open_preprocessed(self.path)
        try:
            f = self._f
            self.attrs = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in f.attrs.items()}
            self.image_size = tuple(int(x) for x in f.attrs["image_size"])
            self.content_digest = str(f.attrs["content_digest"])
            self.num_steps = int(f.attrs["num_steps"])
            self.episodes = EpisodeTable(
                source_index=f["episodes/source_index"][:],
                fingerprint=[fp.decode() for fp in f["episodes/fingerprint"][:]],
                step_start=f["episodes/step_start"][:],
                num_steps=f["episodes/num_steps"][:],
                instruction=list(f["episodes/instruction"].asstr()[:]),
            )
            self._tokens, self._actions = f["steps/action_tokens"], f["steps/actions"]
            self._embeddings, self._offsets, self._jpeg = (
                f["episodes/language_embedding"],
                f["images/offset"],
                f["images/jpeg"],
            )
        except Exception as e:
            self._f.close()
            raise PreprocessedFormatError(f"{self.path}: corrupt preprocessed file ({one_line(e)})") from None

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    def _read(self, what: str, fn):
        try:
            return fn()
        except (OSError, RuntimeError, ValueError, KeyError) as e:
            if isinstance(e, (WindowError, PreprocessedFormatError)):
                raise
            raise PreprocessedFormatError(
                f"{self.path}: corrupt preprocessed file, cannot read {what} "
                f"({type(e).__name__}: {one_line(e)})"
            ) from None

    def decode_frames(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Decoded frames of step rows [start, stop) as uint8 (n, H, W, 3)."""
        offsets = self._read("image offsets", lambda: self._offsets[start : stop + 1])
        blob = self._read("images", lambda: self._jpeg[offsets[0] : offsets[-1]])
        shape = (*self.image_size, 3)
        if out is None:
            out = np.empty((stop - start, *shape), np.uint8)
        base = offsets[0]
        for k in range(stop - start):
            try:
                decode_jpeg(blob[offsets[k] - base : offsets[k + 1] - base], out=out[k])
            except ImageDecodeError as e:
                raise PreprocessedFormatError(f"{self.path}: frame at step row {start + k}: {e}") from None
        return out

    def window(self, start: int, length: int, out: np.ndarray | None = None) -> dict:
        """The `length` steps from step row `start`, which must lie inside one episode.

        Returns frames uint8 (length, H, W, 3), action_tokens uint8 (length, 11), actions float32
        (length, 11), language_embedding, instruction, episode (row in this file), source_index,
        episode_step (position of `start` within its episode). Raises `WindowError` otherwise.
        Frames are decoded into `out` when given (uint8 (length, H, W, 3)).
        """
        episode = self.episodes.episode_of_row(start)
        if episode < 0:
            raise WindowError(
                f"{self.path}: step row {start} is outside every episode (the file has "
                f"{self.num_steps} steps)"
            )
        first = int(self.episodes.step_start[episode])
        end = first + int(self.episodes.num_steps[episode])
        if start + length > end:
            raise WindowError(
                f"{self.path}: window of {length} steps from step row {start} crosses the end of "
                f"episode {episode} (source episode {int(self.episodes.source_index[episode])}, "
                f"step rows {first}..{end - 1})"
            )
        stop = start + length
        return {
            "frames": self.decode_frames(start, stop, out),
            "action_tokens": self._read("action tokens", lambda: self._tokens[start:stop]),
            "actions": self._read("actions", lambda: self._actions[start:stop]),
            "language_embedding": self._read("embeddings", lambda: self._embeddings[episode]),
            "instruction": self.episodes.instruction[episode],
            "episode": episode,
            "source_index": int(self.episodes.source_index[episode]),
            "episode_step": start - first,
        }

    def episode(self, index: int, *, decode_images: bool = True) -> PreprocessedEpisode:
        """Episode `index` (a row of the episode table) whole."""
        if not 0 <= index < self.num_episodes:
            raise IndexError(f"{self.path}: episode {index} out of range (the file has {self.num_episodes})")
        start = int(self.episodes.step_start[index])
        stop = start + int(self.episodes.num_steps[index])
        f = self._f
        raw = self._read("actions", lambda: {k: f[f"steps/action/{k}"][start:stop] for k in ACTION_SPEC})
        offsets = self._read("image offsets", lambda: self._offsets[start : stop + 1])
        blob = self._read("images", lambda: self._jpeg[offsets[0] : offsets[-1]]).tobytes()
        jpegs = [blob[a - offsets[0] : b - offsets[0]] for a, b in zip(offsets[:-1], offsets[1:])]
        return PreprocessedEpisode(
            source_index=int(self.episodes.source_index[index]),
            fingerprint=self.episodes.fingerprint[index],
            instruction=self.episodes.instruction[index],
            language_embedding=self._read("embeddings", lambda: self._embeddings[index]),
            action_tokens=self._read("action tokens", lambda: self._tokens[start:stop]),
            actions=self._read("actions", lambda: self._actions[start:stop]),
            raw_actions=raw,
            jpeg_frames=jpegs,
            images=self.decode_frames(start, stop) if decode_images else None,
        )


def read_episodes(path: Path, *, decode_images: bool = True) -> list[PreprocessedEpisode]:
    """Every episode of a preprocessed file, with frames decoded to uint8 (T, H, W, 3) unless told not to."""
    with PreprocessedFile(path) as f:
        return [f.episode(i, decode_images=decode_images) for i in range(f.num_episodes)]


__all__ = ["EpisodeTable", "WindowError", "PreprocessedFile", "read_episodes"]
