"""One torch-free home for the pipeline's configuration: the model, the training run, and the presets.

    RT1Config     every hyper-parameter of the MaxViT model (frozen, validated; defined in `rt1.model_config`);
                  GoogleRT1Config the same for Google's network (`rt1.google_config`); `rt1.model_families`
                  says which family a config dict is
    TrainConfig   every setting of a training run; `train_ddp.py`'s command line is generated from its
                  fields (flag, group and help text in each field's metadata, defaults shown from values)
    PRESETS       named presets, each a model config together with its training defaults:

        original  the original pipeline exactly: robotic-transformer-pytorch 0.2.3's model function at the
                  original's sizes (224 x 224, memory key/values, mean-pooling TokenLearner, transformer
                  keys/values from the layer input, raw 0..255 pixels, no condition dropout) and its update
                  (SGD momentum 0.9, lr 1e-4 per process, weight decay 1e-3, batch 8, 100 epochs, the loss
                  summed over the batch's frames, no augmentation). The default.
        rt1       Google's RT-1 network (`GoogleRT1Config`, rt1main's configuration: FiLM-EfficientNet-B3 +
                  TokenLearner + decoder over image and action tokens, 256x320 frames) with Google's Adam at
                  lr 1e-4 and its random shift
        tiny      small enough to train on 2 CPU cores in minutes (64 x 64 input, ~0.68 M parameters)

Values defined once elsewhere and only derived here: the 11 action tokens and 256 bins (`rt1.actions`),
the 512-d instruction embedding (`rt1.rlds_spec`). The window length of the index (`data_emerge.py
--window`) and the image size of preprocessing (`--image-size`) default to the default preset's
`num_frames` and `image_size`; training checks that the data fits the model.

Importing this module does not import torch (the data stages run without it). Errors are
`ConfigError` (a `ValueError`) naming the field and the bad value.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from rt1.google_config import GoogleRT1Config
from rt1.model_config import (
    TOKEN_LEARNER_POOLINGS,  # noqa: F401 (re-exported)
    ConfigError,
    RT1Config,
)
from rt1.model_families import MODEL_FAMILIES, ModelConfig, family_name, overridable_fields

# ---- the training run -----------------------------------------------------------------------------

OPTIMIZERS = ("sgd", "adamw")
LOSS_REDUCTIONS = ("mean", "sum_frames_mean_tokens")
AMP_MODES = ("off", "fp16", "bf16")
DEVICES = ("auto", "cpu", "cuda")


def option(
    default,
    help: str,
    *,
    group: str,
    flag: str | None = None,
    choices=None,
    per_preset: bool = False,
    required: bool = False,
):
    """A TrainConfig field with its command-line metadata (read by rt1.train.cli)."""
    return field(
        default=default,
        metadata={
            "help": help,
            "group": group,
            "flag": flag,
            "choices": choices,
            "per_preset": per_preset,
            "required": required,
        },
    )


# Model fields a run may override (`--model.FIELD` on the command line): every field of the model function
# of the preset's family (`overridable_fields`); the command line offers the union over the families.
MODEL_OVERRIDABLE = tuple(
    dict.fromkeys(name for cls in MODEL_FAMILIES.values() for name in overridable_fields(cls))
)


@dataclass(frozen=True)
class TrainConfig:
    """Every training setting. Fields marked per_preset default to the preset's value (see PRESETS)."""

    # data (every path comes from the command line)
    data_dir: Path = option(
        None, "directory of preprocessed files (stage 2 output)", group="data", required=True
    )
    train_index: Path = option(None, "train_idx_{N}.csv from data_emerge.py", group="data", required=True)
    val_index: Path | None = option(
        None, "val_idx_{M}.csv from data_emerge.py (none: no validation)", group="data"
    )
    num_workers: int = option(2, "DataLoader worker processes per training process", group="data")
    augment: bool | None = option(
        None, "RT-1's random shift of training windows", group="data", per_preset=True
    )
    shuffle: bool = option(
        True, "shuffle training windows every epoch (DistributedSampler, reseeded per epoch)", group="data"
    )
    chunk_windows: int = option(
        1,
        "train on chunks of up to K consecutive windows of an episode, each frame encoded once per chunk "
        "(batches still count windows; 1: independent windows, the original's sampling)",
        group="data",
    )
    # model
    preset: str = option("original", "model preset and its training defaults", group="model", choices=None)
    cond_drop_prob: float | None = option(
        None,
        "probability of training a window without its instruction "
        "(classifier-free guidance; none: the preset's)",
        group="model",
    )
    sync_bn: bool = option(
        True,
        "SyncBatchNorm across processes; only with NCCL/CUDA, ignored with a warning on CPU",
        group="model",
        flag="--syncBN",
    )
    freeze_bn: bool = option(
        False, "BatchNorm layers use their running statistics and do not update them", group="model"
    )
    compile: bool = option(False, "torch.compile the model", group="model")
    model_overrides: dict = field(
        default_factory=dict,
        hash=False,
        metadata={
            "group": "model",
            "help": "RT1Config fields that replace the preset's (--model.FIELD VALUE)",
            "cli": False,
        },
    )
    activation_checkpointing: bool = option(
        False,
        "recompute each MaxViT block's and transformer layer's "
        "activations in the backward pass instead of storing them "
        "(same gradients; far less memory, more step time)",
        group="model",
    )
    # optimisation
    epochs: int | None = option(
        None, "epochs: passes over the training windows", group="optimisation", per_preset=True
    )
    batch_size: int | None = option(
        None, "windows per process per micro-batch", group="optimisation", per_preset=True
    )
    grad_accum: int = option(1, "micro-batches per optimizer step", group="optimisation")
    loss_reduction: str | None = option(
        None,
        "what the optimizer minimises: mean (the mean cross-entropy over all "
        "tokens) or sum_frames_mean_tokens (the original's: per-frame token "
        "mean summed over the batch's frames, 48x the mean at batch 8); the "
        "logged loss is always the mean",
        group="optimisation",
        choices=LOSS_REDUCTIONS,
        per_preset=True,
    )
    optimizer: str | None = option(
        None, "sgd (with --momentum) or adamw", group="optimisation", choices=OPTIMIZERS, per_preset=True
    )
    lr: float | None = option(
        None,
        "learning rate per process; the optimizer uses lr x number of processes, as the original",
        group="optimisation",
        per_preset=True,
    )
    lrf: float = option(
        0.1, "final lr as a fraction of the initial one; per-step cosine decay", group="optimisation"
    )
    weight_decay: float | None = option(
        None, "the optimizer's weight decay", group="optimisation", per_preset=True
    )
    momentum: float = option(0.9, "SGD momentum", group="optimisation")
    clip_grad_norm: float | None = option(
        None, "clip the gradient norm to this (none: no clipping)", group="optimisation"
    )
    amp: str = option(
        "off",
        "mixed precision: fp16 (with a GradScaler, e.g. V100), bf16 (Ampere+, CPU) or off",
        group="optimisation",
        choices=AMP_MODES,
    )
    max_steps: int | None = option(
        None,
        "stop after this many optimizer steps in total (the lr schedule then spans "
        "them); writes a resumable checkpoint where it stops",
        group="optimisation",
    )
    seed: int = option(0, "seed of weights, data order and augmentation", group="optimisation")
    # output
    save_dir: Path | None = option(
        None,
        "checkpoints, metrics.jsonl and TensorBoard events (none: "
        "save/{model}_{describe}: save/rt1_ddp for the original preset, "
        "save/rt1_paper_ddp, save/rt1_tiny_ddp)",
        group="output",
    )
    describe: str = option("ddp", "run name used in the default --save-dir", group="output")
    resume: Path | None = option(
        None,
        "checkpoint to resume from (none: the newest checkpoint-*.pt in --save-dir, if any)",
        group="output",
    )
    init_from: Path | None = option(
        None,
        "start a new run from these model weights: a model directory (python -m rt1.export, or Google's "
        "rt1main converted by python -m rt1.model.convert_google) or a checkpoint-*.pt; weights only, the "
        "optimizer and lr schedule start fresh; a --save-dir with a checkpoint resumes it instead",
        group="output",
    )
    keep_checkpoints: int = option(3, "checkpoints kept", group="output")
    save_every: int = option(
        0,
        "also save every N optimizer steps, overwriting the current epoch's "
        "checkpoint-{epoch}.pt (resumable mid-epoch); 0: only at the end of each epoch",
        group="output",
    )
    log_every: int = option(
        10,
        "optimizer steps between TensorBoard/progress updates and, when the progress bar "
        "is off, a log line (metrics.jsonl gets every step)",
        group="output",
    )
    val_every: int = option(
        1, "epochs between validations; the last epoch always validates; 0 = never", group="output"
    )
    progress: bool = option(
        True,
        "tqdm progress bar on rank 0 when stderr is a terminal (otherwise a log line "
        "every --log-every steps carries the progress)",
        group="output",
    )
    tensorboard: bool = option(True, "TensorBoard events in --save-dir", group="output")
    # processes
    device: str = option(
        "auto", "auto: cuda:LOCAL_RANK when CUDA is available, else cpu", group="processes", choices=DEVICES
    )
    dist_timeout: float = option(
        900.0, "seconds a process waits for the others in a collective before failing", group="processes"
    )

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(
                f"TrainConfig.preset {self.preset!r} is not a preset; available: {sorted(PRESETS)}"
            )
        for f in dataclasses.fields(self):
            if f.metadata.get("per_preset") and getattr(self, f.name) is None:
                object.__setattr__(self, f.name, PRESETS[self.preset].train[f.name])
        for name in ("data_dir", "train_index", "val_index", "save_dir", "resume", "init_from"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                if not isinstance(value, str) or not value:
                    raise ConfigError(f"TrainConfig.{name} must be a path, got {value!r}")
                object.__setattr__(self, name, Path(value))
        if self.save_dir is None:
            object.__setattr__(
                self, "save_dir", Path("save") / f"{PRESETS[self.preset].run_name}_{self.describe}"
            )
        self._validate()

    def _fail(self, name: str, rule: str) -> None:
        raise ConfigError(f"TrainConfig.{name} {rule}, got {getattr(self, name)!r}")

    def _validate(self) -> None:
        """Values only: the paths are checked when the run starts (rt1.train.paths)."""
        fail = self._fail

        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for name in ("data_dir", "train_index"):
            if getattr(self, name) is None:
                fail(name, "is required")
        for name in ("epochs", "batch_size", "grad_accum", "log_every", "keep_checkpoints", "chunk_windows"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                fail(name, "must be a positive integer")
        for name in ("num_workers", "val_every", "seed", "save_every"):
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
        if self.cond_drop_prob is not None and (
            not is_num(self.cond_drop_prob) or not 0 <= self.cond_drop_prob <= 1
        ):
            fail("cond_drop_prob", "must be in [0, 1] (or None for the preset's)")
        if not is_num(self.dist_timeout) or self.dist_timeout <= 0:
            fail("dist_timeout", "must be a positive number of seconds")
        self._validate_kinds()
        self._validate_model()

    def _validate_kinds(self) -> None:
        """Choices, the run name and the flags."""
        fail = self._fail
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                fail(f.name, f"must be one of {', '.join(choices)}")
        if not isinstance(self.describe, str) or not self.describe or "/" in self.describe:
            fail("describe", "must be a non-empty name without '/'")
        for f in dataclasses.fields(self):
            if f.type in ("bool", "bool | None") and not isinstance(getattr(self, f.name), bool):
                fail(f.name, "must be True or False")

    def _validate_model(self) -> None:
        """The model overrides and condition dropout fit the preset's family; the model they make is valid."""
        fail = self._fail
        family = type(PRESETS[self.preset].model)
        allowed = overridable_fields(family)
        if not isinstance(self.model_overrides, dict) or set(self.model_overrides) - set(allowed):
            unknown = (
                sorted(set(self.model_overrides) - set(allowed))
                if isinstance(self.model_overrides, dict)
                else []
            )
            fail(
                "model_overrides",
                f"{unknown} not fields of preset {self.preset!r} ({family_name(PRESETS[self.preset].model)}), "
                f"which has {', '.join(allowed)}",
            )
        if self.cond_drop_prob is not None and not hasattr(family, "cond_drop_prob"):
            fail(
                "cond_drop_prob",
                f"is not an option of preset {self.preset!r}: {family_name(PRESETS[self.preset].model)} has no "
                "classifier-free guidance",
            )
        _ = self.model_config  # the overridden model validates itself (a ConfigError naming the field)

    @property
    def model_config(self) -> ModelConfig:
        """The preset's model with this run's overrides, condition dropout (when given) and activation checkpointing."""
        model = PRESETS[self.preset].model.replace(
            **self.model_overrides, activation_checkpointing=self.activation_checkpointing
        )
        return model if self.cond_drop_prob is None else model.replace(cond_drop_prob=self.cond_drop_prob)

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain types only (paths as strings): stored in checkpoints, loadable with weights_only=True."""
        out = {
            f.name: str(v) if isinstance(v := getattr(self, f.name), Path) else v
            for f in dataclasses.fields(self)
        }
        out["model_overrides"] = {
            k: list(v) if isinstance(v, tuple) else v for k, v in self.model_overrides.items()
        }
        return out

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]


# ---- presets --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """A named model configuration together with the training defaults that go with it."""

    name: str  # what --preset takes
    description: str  # one line for the command line's help and the docs
    run_name: str  # {run_name}_{describe} is the default save directory
    model: ModelConfig  # the network's configuration (RT1Config or GoogleRT1Config)
    train: MappingProxyType  # TrainConfig per_preset field -> value

    def __post_init__(self) -> None:
        per_preset = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("per_preset")}
        if set(self.train) != per_preset:
            raise ConfigError(
                f"preset {self.name!r} must give exactly the per-preset training fields "
                f"{sorted(per_preset)}, got {sorted(self.train)}"
            )


# The tiny MaxViT (64x64, ~0.68 M parameters): the `tiny` preset's model, and the `demo` preset's at 32x32.
TINY_MODEL = RT1Config(
    image_size=64,
    conv_stem_dim=16,
    dim=32,
    dim_head=16,
    depth=(1, 1),
    attention_window=4,
    mbconv_expansion=2,
    dropout=0.0,
    transformer_depth=2,
    transformer_heads=4,
    transformer_dim_head=16,
    cond_dim=128,
    film_mult=2,
    token_learner_ff_mult=1,
)


def _preset(name: str, run_name: str, description: str, model: ModelConfig, **train) -> Preset:
    return Preset(name, description, run_name, model, MappingProxyType(train))


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        # robotic-transformer-pytorch 0.2.3 at the original pipeline's configuration, as it was trained: memory
        # key/values, mean-pooling TokenLearner, raw-input transformer keys/values, raw pixels, and no condition
        # dropout (the original called model(video, texts), whose cond_drop_prob is 0). Its text stem took T5-base
        # (768-d); rt1.model.convert_original sets text_embed_dim (cond_dim = 2x) from a checkpoint.
        # Its update: SGD momentum 0.9, lr 1e-4 x world size, weight decay 1e-3, the loss summed over frames, no
        # augmentation.
        _preset(
            "original",
            "rt1",
            "the original pipeline's model function and run, exactly (224x224, ~245 M parameters)",
            RT1Config(
                attention_memory_kv=4,
                token_learner_pooling="mean",
                transformer_kv_source="input",
                pixel_scaling="raw",
                cond_drop_prob=0.0,
            ),
            optimizer="sgd",
            lr=1e-4,
            weight_decay=1e-3,
            batch_size=8,
            epochs=100,
            loss_reduction="sum_frames_mean_tokens",
            augment=False,
        ),
        # Google's RT-1 network (rt1main's configuration) with Google's optimiser (transformer_mixin.gin: Adam,
        # lr 1e-4, no weight decay = AdamW with weight decay 0; Keras' Adam eps is 1e-7, torch's 1e-8) and its
        # random shift of 256x320 frames (preprocessors.py: pad 20/50, crop back). Not Google's: the batch (the
        # paper trained on far larger ones across TPUs) and the epoch count, which are this pipeline's.
        _preset(
            "rt1",
            "rt1_google",
            "Google's RT-1: FiLM-EfficientNet-B3 + TokenLearner + 8-layer decoder (256x320 frames, 35.3 M values)",
            GoogleRT1Config(),
            optimizer="adamw",
            lr=1e-4,
            weight_decay=0.0,
            batch_size=8,
            epochs=100,
            loss_reduction="mean",
            augment=True,
        ),
        # Trains on 2 CPU cores in minutes: AdamW at lr 1e-3 per process on 16 windows per process (how these were
        # chosen: docs/history.md).
        _preset(
            "tiny",
            "rt1_tiny",
            "small enough to train on 2 CPU cores in minutes (64x64, ~0.68 M parameters)",
            TINY_MODEL,
            optimizer="adamw",
            lr=1e-3,
            weight_decay=1e-2,
            batch_size=16,
            epochs=10,
            loss_reduction="mean",
            augment=True,
        ),
        # The demo's recipe: the tiny model on 32x32 frames, no condition dropout (the demo uses no guidance), no
        # random shift, a learned position embedding of the 4x4 feature map before TokenLearner
        # (`feature_position_embedding`); lr 1e-3 and batch 8 per process, i.e. lr 2e-3 on 16 windows per step
        # under the demo's 2 processes (why each: docs/history.md).
        _preset(
            "demo",
            "rt1_demo",
            "the demo's recipe: the tiny model on 32x32 frames with a feature-map position embedding, "
            "no condition dropout, no shift",
            TINY_MODEL.replace(image_size=32, cond_drop_prob=0.0, feature_position_embedding=True),
            optimizer="adamw",
            lr=1e-3,
            weight_decay=1e-2,
            batch_size=8,
            epochs=10,
            loss_reduction="mean",
            augment=False,
        ),
    )
}
DEFAULT_PRESET = "original"  # the original's command lines reproduce the original
# The only places these numbers are defined: the presets' models.
DEFAULT_IMAGE_SIZE = PRESETS[DEFAULT_PRESET].model.image_size
DEFAULT_WINDOW = PRESETS[DEFAULT_PRESET].model.num_frames


def retired_preset(train_args: dict, model_type: str) -> str | None:
    """Why a model trained with a preset that has since become another network cannot be used, or None.

    The `rt1` preset was the original's MaxViT with some of Google's choices until it became Google's network.
    """
    if train_args.get("preset") == "rt1" and model_type == RT1Config.model_type:
        return (
            "was trained with the former `rt1` preset (the original's MaxViT with some of Google's choices); "
            "`--preset rt1` is now Google's RT-1 network (FiLM-EfficientNet-B3 + TokenLearner + decoder, "
            "256x320 frames), which these weights do not fit: train again with --preset rt1"
        )
    return None


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available presets: {sorted(PRESETS)}")
    return PRESETS[name]


def model_preset(name: str, **overrides) -> ModelConfig:
    """The model of the named preset (see `PRESETS`), with optional field overrides (validated)."""
    config = get_preset(name).model
    return config.replace(**overrides) if overrides else config
