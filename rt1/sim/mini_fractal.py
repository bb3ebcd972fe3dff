"""A small, learnable dataset in exactly the on-disk format of `fractal20220817_data` 0.1.0.

    python -m rt1.sim.mini_fractal --out DIR --episodes N [--seed S] [--overwrite]

writes `DIR/fractal20220817_data/0.1.0/` (dataset_info.json, features.json, TFRecord shards of the
`train` split) with the real dataset's feature spec (`rt1.rlds_spec`), so that
`tfds.builder_from_directory(DIR/fractal20220817_data/0.1.0)` reads it as it reads the real one.

Each episode is a rollout of the scripted expert (`rt1.sim.expert`), recorded DART-style (noise on
the executed world_vector, the clean expert action as the label; `--dart-std`, 0 for none) in the
closed-loop environment `rt1.sim.env.FractalSimEnv`, recorded by `rt1.sim.record.record_episode`:
the data and the environment are one model of the world, and every recorded observation is what the
environment returned. The scene: a table, a cabinet with three drawers and two or three coloured
objects (each object name has its own colour and shape); a gripper seen from above moves by
`world_vector` toward what the instruction names, closes on it (`gripper_closedness_action` +1)
and carries out the task (lift, carry, pull a drawer, rotate, push). `terminate_episode` is
[0,1,0] on every step and [1,0,0] on the last. Instructions use real fractal phrasings, and each
has a deterministic unit-norm 512-d embedding (`instruction_embedding`). Some episodes are cut
short (fewer than 6 steps), as aborted real episodes are. Output is deterministic for a seed:
episode i of seed S is `make_episode(i, S)`, drawn from `np.random.default_rng([S, i])`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from rt1.errors import RT1Error, run_cli
from rt1.io import outermost_missing, remove_empty_dirs
from rt1.rlds_spec import DATASET_NAME, DATASET_VERSION
from rt1.sim.record import DART_STD, record_episode
from rt1.sim.scene import instruction_embedding  # noqa: F401  (re-exported: the embedding of the data)


class MiniFractalError(RT1Error, ValueError):
    """A bad argument of the generator (the message names it)."""


def make_episode(index: int, seed: int, dart_std: float = DART_STD) -> dict:
    """Episode `index` of the dataset for `seed`, as a TFDS example dict (RLDS layout)."""
    return record_episode(index, seed, dart_std=dart_std)


# ----------------------------------------------------------------------------------------------
# Writing the TFDS dataset directory


def _builder_class():
    import tensorflow_datasets as tfds

    from rt1.rlds_spec import tfds_features

    class MiniFractal(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = DATASET_NAME
        VERSION = tfds.core.Version(DATASET_VERSION)

        def __init__(self, *, episodes: int, seed: int, dart_std: float, **kwargs):
            self._episodes, self._seed, self._dart_std = episodes, seed, dart_std
            super().__init__(**kwargs)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description="Synthetic table-top episodes in the format of fractal20220817_data (rt1.sim.mini_fractal).",
                features=tfds_features(),
                disable_shuffling=True,  # write in generation order: episode i of the split is make_episode(i, seed)
                homepage="https://ai.googleblog.com/2022/12/rt-1-robotics-transformer-for-real.html",
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(self._episodes):
                yield i, make_episode(i, self._seed, self._dart_std)

    return MiniFractal


EPISODES_PER_SHARD = 50  # the real dataset has ~85 per shard; above 16, TFDS's default interleave reorders


def default_shards(episodes: int) -> int:
    """About EPISODES_PER_SHARD episodes per shard; TFDS splits unevenly when the count does not divide."""
    return max(1, round(episodes / EPISODES_PER_SHARD))


def _read_like_the_real_dataset(version_dir: Path) -> None:
    """Drop the 'ordered dataset' flag from dataset_info.json once the records are written in order.

    The real dataset does not carry it, so TFDS reads it with its default shard interleave (cycle 16,
    block 16); with the flag TFDS would read this one in order and hide that difference from tests.
    """
    info_path = version_dir / "dataset_info.json"
    info = json.loads(info_path.read_text())
    info.pop("disableShuffling", None)
    info_path.write_text(json.dumps(info, indent=2))


def write_dataset(
    out: Path,
    episodes: int,
    seed: int = 0,
    overwrite: bool = False,
    shards: int | None = None,
    dart_std: float = DART_STD,
) -> Path:
    """Write the dataset under `out`; returns the version directory to pass to builder_from_directory."""
    if episodes < 1:
        raise MiniFractalError(f"--episodes must be at least 1, got {episodes}")
    if seed < 0:  # numpy's generator takes only non-negative seeds
        raise MiniFractalError(f"--seed must be >= 0, got {seed}")
    if shards is not None and shards < 1:
        raise MiniFractalError(f"--shards must be at least 1, got {shards}")
    if not dart_std >= 0:
        raise MiniFractalError(f"--dart-std must be >= 0, got {dart_std}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"--out {out} exists and is not empty (pass --overwrite to replace it)")
    import tensorflow_datasets as tfds

    created = outermost_missing(out)
    out.mkdir(parents=True, exist_ok=True)
    shards = shards or default_shards(episodes)
    try:
        with tempfile.TemporaryDirectory(dir=out, prefix=".mini_fractal-") as tmp:
            builder = _builder_class()(episodes=episodes, seed=seed, dart_std=dart_std, data_dir=tmp)
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(num_shards=shards, try_download_gcs=False)
            )
            _read_like_the_real_dataset(Path(tmp) / DATASET_NAME / DATASET_VERSION)
            final = out / DATASET_NAME
            if final.exists():
                shutil.rmtree(final)
            (Path(tmp) / DATASET_NAME).rename(final)
    except BaseException:
        if created is not None:  # a failed run leaves no directories it made
            remove_empty_dirs(out, created)
        raise
    return out / DATASET_NAME / DATASET_VERSION


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rt1.sim.mini_fractal",
        description="Write a small learnable dataset in the exact TFDS/RLDS format of fractal20220817_data 0.1.0.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="directory to create; the dataset goes to OUT/fractal20220817_data/0.1.0",
    )
    parser.add_argument("--episodes", type=int, required=True, help="number of episodes (>= 1)")
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed; the same seed gives the same dataset (default 0)"
    )
    parser.add_argument(
        "--shards",
        type=int,
        default=None,
        help=f"TFRecord shards (default: about {EPISODES_PER_SHARD} episodes per shard)",
    )
    parser.add_argument(
        "--dart-std",
        type=float,
        default=DART_STD,
        help="std of the noise on the executed world_vector; labels are the clean expert action "
        "(default %(default)s; 0: the noise-free expert)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty --out")
    args = parser.parse_args(argv)

    def run(_) -> int:
        path = write_dataset(args.out, args.episodes, args.seed, args.overwrite, args.shards, args.dart_std)
        print(f"wrote {args.episodes} episodes to {path}")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
