"""The one way this project reads RLDS episodes: canonical order, so a position names one episode.

TFDS interleaves shard reads by default (cycle length 16, block length 16), even with
`shuffle_files=False`: with more than 16 episodes per shard, `train[a:b]` is then *not* episodes
a..b-1 of a full read, and two reads of overlapping slices disagree about which episode is where.
Every reader here (stage 1, the bundled dataset's tests, benchmarks) goes through `read_episodes`,
which reads with `interleave_cycle_length=1`: shard files in order, records in file order. So

    source_index p  ==  the p-th record of the `train` split, counting shard by shard in file order

and a slice `[a, b)` is exactly source episodes a..b-1, whatever slices a run is split into.
`shard_of(builder, p)` names the TFRecord file that holds episode p (for error messages).
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from rt1.errors import RT1Error
from rt1.rlds_spec import DATASET_NAME, DATASET_VERSION, spec_mismatches

SPLIT = "train"


class RLDSReadError(RT1Error, ValueError):
    """The RLDS directory cannot be read; the one-line message names the directory or shard file."""


def resolve_rlds_dir(data_dir: Path) -> Path:
    """Accept the version directory itself, or a parent holding [fractal20220817_data/]0.1.0.

    `gsutil -m cp -r gs://gresearch/robotics/fractal20220817_data/0.1.0 DIR/fractal20220817_data/`
    puts the files in DIR/fractal20220817_data/0.1.0; any of DIR, DIR/fractal20220817_data or the
    version directory itself is accepted.
    """
    data_dir = Path(data_dir)
    for candidate in (data_dir, data_dir / DATASET_VERSION, data_dir / DATASET_NAME / DATASET_VERSION):
        if (candidate / "dataset_info.json").is_file():
            return candidate
    raise RLDSReadError(
        f"--data-dir {data_dir} is not a TFDS dataset directory (no dataset_info.json; "
        f"expected e.g. .../{DATASET_NAME}/{DATASET_VERSION})"
    )


def open_builder(data_dir: Path):
    """`tfds.builder_from_directory` after checking the directory holds fractal-format data."""
    import tensorflow_datasets as tfds

    rlds_dir = resolve_rlds_dir(data_dir)
    try:
        builder = tfds.builder_from_directory(str(rlds_dir))
    except Exception as e:  # TFDS raises several types for unreadable metadata
        raise RLDSReadError(f"{rlds_dir}: cannot read the TFDS dataset ({type(e).__name__}: {e})") from None
    name, version = builder.info.name, str(builder.info.version)
    for what, found, expected in (("name", name, DATASET_NAME), ("version", version, DATASET_VERSION)):
        if found != expected:  # caught here, not later as a "corrupt shard" or as a wrong feature
            raise RLDSReadError(
                f"{rlds_dir}: a dataset of {what} '{found}' (dataset_info.json), this code reads "
                f"{DATASET_NAME}/{DATASET_VERSION}"
            )
    problems = spec_mismatches(builder.info.features)
    if problems:
        raise RLDSReadError(f"{rlds_dir}: features are not the fractal spec: {'; '.join(problems)}")
    if SPLIT not in builder.info.splits:
        raise RLDSReadError(f"{rlds_dir}: no '{SPLIT}' split")
    shards = builder.info.splits[SPLIT].filepaths
    for shard in shards:
        exists = getattr(shard, "exists", None)  # TFDS gives epath objects (local or gs://)
        if not (exists() if exists is not None else Path(shard).is_file()):
            raise RLDSReadError(
                f"{os.fspath(shard)}: TFRecord shard missing ({rlds_dir}/dataset_info.json lists "
                f"{len(shards)} shards of the {SPLIT} split): copy the dataset again"
            )
    return builder


def num_episodes(builder) -> int:
    return int(builder.info.splits[SPLIT].num_examples)


def shard_of(builder, position: int) -> Path:
    """The TFRecord shard file holding source episode `position` (shards counted in file order)."""
    split = builder.info.splits[SPLIT]
    ends = np.cumsum(split.shard_lengths).tolist()
    shard = min(bisect.bisect_right(ends, position), len(ends) - 1)
    return Path(split.filepaths[shard])


def canonical_read_config():
    """`tfds.ReadConfig` of the canonical order: one shard at a time, in file order."""
    import tensorflow_datasets as tfds

    return tfds.ReadConfig(interleave_cycle_length=1)


def read_episodes(builder, start: int, end: int, decode_images: bool = False) -> Iterator[tuple[int, dict]]:
    """Yield `(source_index, steps)` for source episodes start..end-1 in canonical order.

    `steps` is the episode's steps batched as numpy arrays (leading dimension T). Images stay JPEG
    bytes unless `decode_images`. A corrupt or truncated shard raises `RLDSReadError` naming the
    shard file and the episode.
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds

    decoders = None if decode_images else {"steps": {"observation": {"image": tfds.decode.SkipDecoding()}}}
    ds = builder.as_dataset(
        split=f"{SPLIT}[{start}:{end}]",
        shuffle_files=False,
        decoders=decoders,
        read_config=canonical_read_config(),
    )
    ds = ds.map(lambda episode: episode["steps"].batch(1 << 30).get_single_element())
    stream = iter(tfds.as_numpy(ds))
    for position in range(start, end):
        try:
            steps = next(stream)
        except StopIteration:
            raise RLDSReadError(
                f"{resolve_rlds_dir(builder.data_dir)}: the {SPLIT} split ended before episode {position}"
            ) from None
        except tf.errors.OpError as e:
            message = (e.message or type(e).__name__).strip().splitlines()[0]
            raise RLDSReadError(
                f"{shard_of(builder, position)}: corrupt or truncated TFRecord shard "
                f"(reading source episode {position}: {message})"
            ) from None
        yield position, steps
