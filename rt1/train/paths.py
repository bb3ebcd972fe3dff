"""The paths of a run, checked when it starts. A TrainConfig checks its values only, so one can be built with
paths that do not exist (yet): in a notebook, a test or a dry run.

`check_paths(cfg)` raises a ConfigError naming the field (`train_ddp.py` names the option instead): the data
directory and the index files exist, --resume and --init-from exist when given, and --save-dir is a directory
or does not exist yet (the trainer creates it). `train` calls it before it writes anything; `train_ddp.py`
calls it with the command line (`rt1.train.cli.config_from_args`), so a wrong path is a usage error (exit 2).
Torch-free, like the command line.
"""

from __future__ import annotations

from rt1.config import ConfigError, TrainConfig


def check_paths(cfg: TrainConfig) -> None:
    """Raise ConfigError for the first path of `cfg` that a run cannot start from."""

    def fail(name: str, rule: str) -> None:
        raise ConfigError(f"TrainConfig.{name} {rule}, got {getattr(cfg, name)!r}")

    if not cfg.data_dir.is_dir():
        fail("data_dir", "must be an existing directory of preprocessed files")
    for name in ("train_index", "val_index", "resume"):
        path = getattr(cfg, name)
        if path is not None and not path.is_file():
            fail(name, "must be an existing file")
    if cfg.init_from is not None and not cfg.init_from.exists():
        fail("init_from", "must be an existing model directory or checkpoint file")
    if cfg.save_dir.exists() and not cfg.save_dir.is_dir():
        fail("save_dir", "exists and is not a directory")


__all__ = ["check_paths"]
