"""TrainConfig: every training setting in one typed dataclass, validated when it is built.

    cfg = TrainConfig.for_preset("tiny", data_dir=PRE, train_index=TRAIN_CSV, val_index=VAL_CSV)
    rt1.train.train(cfg)

`train_ddp.py` builds one from its command line (`build_arg_parser` / `config_from_args`), so every
path comes from the command line. Errors are `ValueError`s that name the field and the bad value.

Per-preset defaults (`PRESET_DEFAULTS`): the rt1 preset keeps the original run's settings (SGD
momentum 0.9, lr 1e-4 per process, weight decay 1e-3, batch 8 per GPU, SyncBatchNorm, 100 epochs);
the tiny preset has settings that make it learn on 2 CPU cores in minutes (AdamW, a larger lr,
see the table). An explicit value always wins over the preset's default.

Learning rate: `lr` is per process, as in the original: the optimizer runs at lr * world_size and a
per-step cosine schedule takes it down to lrf * lr * world_size at the last step. The schedule's
length is epochs * steps_per_epoch, or max_steps when that is smaller.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

OPTIMIZERS = ("sgd", "adamw")
AMP_MODES = ("off", "fp16", "bf16")
DEVICES = ("auto", "cpu", "cuda")

# Defaults that depend on the model preset. Every other field has one default (the dataclass's).
PRESET_DEFAULTS: dict[str, dict] = {
    # The original run's optimiser settings. Still to integrate (issue 12): its loss reduction
    # (action_loss reduction="sum_frames_mean_tokens"), no augmentation, raw-pixel input (model_config
    # pixel_scaling) and cond_drop_prob 0 (the model preset's) in the trainer.
    "original": {"optimizer": "sgd", "lr": 1e-4, "weight_decay": 1e-3, "batch_size": 8, "epochs": 100},
    "rt1": {"optimizer": "sgd", "lr": 1e-4, "weight_decay": 1e-3, "batch_size": 8, "epochs": 100},
    # Tuned on the bundled dataset (2 CPU cores, tests/test_train_ddp.py::test_tiny_preset_learns...):
    # SGD at 1e-4 barely moves a freshly initialised tiny model in a few hundred steps; AdamW at 1e-3
    # per process learns the gripper from the image after ~5000-6500 windows (2e-3 and 3e-3 did not
    # within that budget, 5e-4 was slower). The tiny model's learning is sample-bound, so a batch of
    # 16 per process uses the CPU better than 8 at no cost in learning per window.
    "tiny": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-2, "batch_size": 16, "epochs": 10},
}


def _model_name(preset: str) -> str:
    return "rt1" if preset == "rt1" else f"rt1_{preset}"


@dataclass(frozen=True)
class TrainConfig:
    # data (paths: every one from the command line)
    data_dir: Path                       # preprocessed files (DataPreprocess_batch_*.py output)
    train_index: Path                    # train_idx_{N}.csv (data_emerge.py output)
    val_index: Path | None = None        # val_idx_{M}.csv; None: no validation
    save_dir: Path | None = None         # None -> save/{model}_{describe}
    describe: str = "ddp"
    # model
    preset: str = "rt1"
    cond_drop_prob: float | None = None  # None: the preset's (0.2)
    compile: bool = False
    # optimisation
    epochs: int = 100
    batch_size: int = 8                  # per process
    grad_accum: int = 1                  # micro-batches per optimizer step
    lr: float = 1e-4                     # per process; effective lr = lr * world_size
    lrf: float = 0.1                     # final lr = lrf * lr (cosine, per step)
    weight_decay: float = 1e-3
    optimizer: str = "sgd"
    momentum: float = 0.9                # SGD only
    clip_grad_norm: float | None = None  # None: no clipping
    sync_bn: bool = True                 # SyncBatchNorm when the backend supports it (NCCL/CUDA)
    freeze_bn: bool = False              # BatchNorm layers use their running statistics and do not update them
    amp: str = "off"                     # off | fp16 (GradScaler) | bf16
    max_steps: int | None = None         # stop after this many optimizer steps in total
    # data loading
    num_workers: int = 2                 # DataLoader workers per process
    augment: bool = True                 # RT-1's random shift on training windows
    shuffle: bool = True                 # shuffle training windows (DistributedSampler, reseeded every epoch)
    seed: int = 0
    # bookkeeping
    log_every: int = 10                  # optimizer steps between TensorBoard train scalars / progress updates
    val_every: int = 1                   # epochs between validations (0: never; the last epoch always validates)
    keep_checkpoints: int = 3
    resume: Path | None = None           # None: resume from the latest checkpoint in save_dir, if any
    device: str = "auto"                 # auto: cuda:LOCAL_RANK when CUDA is available, else cpu
    dist_timeout: float = 900.0          # seconds a rank waits in a collective before failing
    progress: bool = True                # tqdm bar on rank 0
    tensorboard: bool = True

    def __post_init__(self) -> None:
        for name in ("data_dir", "train_index", "val_index", "save_dir", "resume"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                if not isinstance(value, str) or not value:
                    raise ValueError(f"TrainConfig.{name} must be a path, got {value!r}")
                object.__setattr__(self, name, Path(value))
        if self.save_dir is None:
            object.__setattr__(self, "save_dir", Path("save") / f"{_model_name(self.preset)}_{self.describe}")
        self._validate()

    # ---- validation -------------------------------------------------------------------------------

    def _validate(self) -> None:
        from rt1.model import PRESETS

        def fail(name: str, rule: str) -> None:
            raise ValueError(f"TrainConfig.{name} {rule}, got {getattr(self, name)!r}")

        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if self.preset not in PRESETS:
            raise ValueError(f"TrainConfig.preset {self.preset!r} is not a model preset; available: {sorted(PRESETS)}")
        for name in ("epochs", "batch_size", "grad_accum", "log_every", "keep_checkpoints"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                fail(name, "must be a positive integer")
        for name in ("num_workers", "val_every", "seed"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 0:
                fail(name, "must be a non-negative integer")
        if self.max_steps is not None and (not is_int(self.max_steps) or self.max_steps < 1):
            fail("max_steps", "must be a positive integer (or None)")
        if not is_num(self.lr) or self.lr <= 0:
            fail("lr", "must be a positive number")
        if not is_num(self.lrf) or not 0.0 <= self.lrf <= 1.0:
            fail("lrf", "must be in [0, 1] (final lr = lrf * lr)")
        if not is_num(self.weight_decay) or self.weight_decay < 0:
            fail("weight_decay", "must be a non-negative number")
        if not is_num(self.momentum) or not 0.0 <= self.momentum < 1.0:
            fail("momentum", "must be in [0, 1)")
        if self.clip_grad_norm is not None and (not is_num(self.clip_grad_norm) or self.clip_grad_norm <= 0):
            fail("clip_grad_norm", "must be a positive number (or None)")
        if self.cond_drop_prob is not None and (not is_num(self.cond_drop_prob) or not 0 <= self.cond_drop_prob <= 1):
            fail("cond_drop_prob", "must be in [0, 1] (or None for the preset's)")
        if not is_num(self.dist_timeout) or self.dist_timeout <= 0:
            fail("dist_timeout", "must be a positive number of seconds")
        if self.optimizer not in OPTIMIZERS:
            fail("optimizer", f"must be one of {', '.join(OPTIMIZERS)}")
        if self.amp not in AMP_MODES:
            fail("amp", f"must be one of {', '.join(AMP_MODES)}")
        if self.device not in DEVICES:
            fail("device", f"must be one of {', '.join(DEVICES)}")
        if not isinstance(self.describe, str) or not self.describe or "/" in self.describe:
            fail("describe", "must be a non-empty name without '/'")
        for name in ("sync_bn", "freeze_bn", "compile", "augment", "shuffle", "progress", "tensorboard"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "must be True or False")
        # Paths that must exist now (save_dir is created by the trainer).
        if not self.data_dir.is_dir():
            fail("data_dir", "must be an existing directory of preprocessed files")
        for name in ("train_index", "val_index", "resume"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                fail(name, "must be an existing file")
        if self.save_dir.exists() and not self.save_dir.is_dir():
            fail("save_dir", "exists and is not a directory")

    # ---- construction and export ------------------------------------------------------------------

    @classmethod
    def for_preset(cls, preset: str = "rt1", **values) -> TrainConfig:
        """A config with `preset`'s defaults (PRESET_DEFAULTS) under the explicit `values`."""
        if preset not in PRESET_DEFAULTS:
            raise ValueError(f"TrainConfig.preset {preset!r} has no training defaults; "
                             f"available: {sorted(PRESET_DEFAULTS)}")
        return cls(preset=preset, **{**PRESET_DEFAULTS[preset], **values})

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain types only (paths as strings): stored in checkpoints, loadable with weights_only=True."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @property
    def model_name(self) -> str:
        return _model_name(self.preset)


__all__ = ["TrainConfig", "PRESET_DEFAULTS", "OPTIMIZERS", "AMP_MODES", "DEVICES"]
