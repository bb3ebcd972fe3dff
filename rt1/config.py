"""One torch-free home for the pipeline's configuration: the model, the training run, and the presets.

    RT1Config     every hyper-parameter of the model (frozen, validated)
    TrainConfig   every setting of a training run; `train_ddp.py`'s command line is generated from its
                  fields (flag, group and help text in each field's metadata, defaults shown from values)
    PRESETS       named presets, each a model config together with its training defaults:

        original  the original pipeline exactly: robotic-transformer-pytorch 0.2.3's model function at the
                  original's sizes (224 x 224, memory key/values, mean-pooling TokenLearner, transformer
                  keys/values from the layer input, raw 0..255 pixels, no condition dropout) and its update
                  (SGD momentum 0.9, lr 1e-4 per process, weight decay 1e-3, batch 8, 100 epochs, the loss
                  summed over the batch's frames, no augmentation). The default.
        rt1       the same sizes and optimiser with the RT-1 paper's choices: Google's TokenLearner, no
                  memory key/values, k/v from the modulated input, ImageNet input scaling, condition dropout
                  0.2 (trains the null embedding guidance needs), the mean loss, random-shift augmentation
        tiny      small enough to train on 2 CPU cores in minutes (64 x 64 input, ~0.68 M parameters)

Values defined once elsewhere and only derived here: the 11 action tokens and 256 bins (`rt1.actions`),
the 512-d instruction embedding (`rt1.data.rlds_spec`). The window length of the index (`data_emerge.py
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

from rt1.actions import NUM_ACTION_TOKENS, NUM_BINS
from rt1.data.rlds_spec import EMBEDDING_DIM
from rt1.errors import RT1Error


class ConfigError(RT1Error, ValueError):
    """A configuration value is invalid; the message names the field and the value."""


# ---- the model ------------------------------------------------------------------------------------

TOKEN_LEARNER_POOLINGS = ("softmax", "mean")
TRANSFORMER_KV_SOURCES = ("modulated", "input")
PIXEL_SCALINGS = ("imagenet", "raw")
RUNTIME_ONLY_FIELDS = ("activation_checkpointing",)  # how to compute, not what: not compared, not persisted


@dataclass(frozen=True)
class RT1Config:
    """Every hyper-parameter of the RT-1 model; the defaults are the original configuration."""

    # image encoder (MaxViT)
    image_size: int = 224               # square input images, H = W = image_size
    channels: int = 3
    conv_stem_dim: int = 64             # width of the stride-2 convolutional stem
    dim: int = 96                       # width of the first MaxViT stage; stage i has dim * 2**i
    dim_head: int = 32                  # MaxViT attention head width (heads = stage width / dim_head)
    depth: tuple[int, ...] = (2, 2, 5, 2)  # MaxViT blocks per stage; every stage halves the feature map
    attention_window: int = 7           # block and grid attention over attention_window x attention_window cells
    mbconv_expansion: int = 4
    mbconv_shrinkage: float = 0.25      # squeeze-excitation hidden width = shrinkage * expanded width
    dropout: float = 0.1                # MaxViT attention and feed-forward dropout
    attention_memory_kv: int = 0        # learned memory key/value pairs per MaxViT attention (original: 4)
    # action head: fixed by the tokenizer (rt1.actions), checked
    num_actions: int = NUM_ACTION_TOKENS
    num_bins: int = NUM_BINS
    # temporal transformer
    num_frames: int = 6                 # frames per training window (the history length); data_emerge's default
    transformer_depth: int = 6
    transformer_heads: int = 8          # query heads; keys and values use one shared head (multi-query)
    transformer_dim_head: int = 64
    transformer_dropout: float = 0.0
    ff_mult: int = 4                    # feed-forward hidden width multiplier (MaxViT and transformer)
    num_learned_tokens: int = 8         # TokenLearner tokens per frame
    token_learner_ff_mult: int = 2
    token_learner_pooling: str = "softmax"  # "softmax" (Google, with LayerNorm) | "mean" (original, no norm)
    transformer_kv_source: str = "modulated"  # "modulated": k, v from FiLM(LN(x)) | "input": from x (original)
    # text conditioning (FiLM + classifier-free guidance)
    text_embed_dim: int = EMBEDDING_DIM  # the dataset's Universal Sentence Encoder embedding (512)
    cond_dim: int = 1024                # width of the shared text MLP stem feeding every FiLM layer
    film_mult: int = 4                  # hidden width of each FiLM generator = film_mult * its feature width
    cond_drop_prob: float = 0.2         # training probability of replacing the text by the null embedding
    # input
    pixel_scaling: str = "imagenet"     # uint8 pixels -> model input: "imagenet" mean/std | "raw" 0..255 floats
    # training-time trade-off, not part of the model function: recompute each MaxViT block's and transformer
    # layer's activations in the backward pass instead of storing them (same outputs and gradients, less
    # memory, more time). Left out of equality and of to_dict(), so checkpoints written with and without it
    # are interchangeable (resume, load_model).
    activation_checkpointing: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        # Accept lists (e.g. from JSON/YAML) for `depth`, store a tuple so the config stays hashable.
        if not isinstance(self.depth, tuple):
            object.__setattr__(self, "depth", tuple(self.depth))
        positive = (
            "image_size", "channels", "conv_stem_dim", "dim", "dim_head", "attention_window", "mbconv_expansion",
            "num_actions", "num_bins", "num_frames", "transformer_depth", "transformer_heads",
            "transformer_dim_head", "ff_mult", "num_learned_tokens", "token_learner_ff_mult",
            "text_embed_dim", "cond_dim", "film_mult",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"RT1Config.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.activation_checkpointing, bool):
            raise ConfigError(f"RT1Config.activation_checkpointing must be True or False, "
                              f"got {self.activation_checkpointing!r}")
        value = self.attention_memory_kv
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"RT1Config.attention_memory_kv must be a non-negative integer, got {value!r}")
        for name, choices in (("token_learner_pooling", TOKEN_LEARNER_POOLINGS),
                              ("transformer_kv_source", TRANSFORMER_KV_SOURCES), ("pixel_scaling", PIXEL_SCALINGS)):
            value = getattr(self, name)
            if value not in choices:
                raise ConfigError(f"RT1Config.{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
        if (self.num_actions, self.num_bins) != (NUM_ACTION_TOKENS, NUM_BINS):
            raise ConfigError(f"RT1Config.num_actions/num_bins must be the tokenizer's {NUM_ACTION_TOKENS}/{NUM_BINS} "
                             f"(rt1.actions), got {self.num_actions}/{self.num_bins}")
        if len(self.depth) == 0 or any(not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in self.depth):
            raise ConfigError(f"RT1Config.depth must be a non-empty tuple of positive integers, got {self.depth!r}")
        for name in ("dropout", "transformer_dropout", "cond_drop_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"RT1Config.{name} must be in [0, 1], got {value!r}")
        if not 0.0 < self.mbconv_shrinkage <= 1.0:
            raise ConfigError(f"RT1Config.mbconv_shrinkage must be in (0, 1], got {self.mbconv_shrinkage!r}")
        if int(self.mbconv_expansion * self.dim * self.mbconv_shrinkage) < 1:
            raise ConfigError(
                f"RT1Config.mbconv_shrinkage={self.mbconv_shrinkage} leaves no squeeze-excitation width "
                f"for expanded width {self.mbconv_expansion * self.dim}"
            )
        for stage, width in enumerate(self.stage_dims):
            if width % self.dim_head:
                raise ConfigError(
                    f"MaxViT stage {stage} has width {width} (dim={self.dim} * 2**{stage}), "
                    f"which dim_head={self.dim_head} does not divide"
                )
        # The stem halves the image, then every stage halves it again (stride-2 MBConv).
        size = self.image_size
        if size % 2:
            raise ConfigError(f"image_size={size} must be even (the convolutional stem has stride 2)")
        size //= 2
        for stage in range(len(self.depth)):
            if size % 2:
                raise ConfigError(
                    f"image_size={self.image_size}: the feature map entering MaxViT stage {stage} is "
                    f"{size}x{size}, which the stride-2 downsampling cannot halve"
                )
            size //= 2
            if size % self.attention_window:
                raise ConfigError(
                    f"image_size={self.image_size}: MaxViT stage {stage} has a {size}x{size} feature map, "
                    f"which attention_window={self.attention_window} does not divide"
                )

    # ---- derived values ---------------------------------------------------------------------------

    @property
    def stage_dims(self) -> tuple[int, ...]:
        """Width of each MaxViT stage."""
        return tuple(self.dim * 2**i for i in range(len(self.depth)))

    @property
    def embed_dim(self) -> int:
        """Width of the image tokens, the transformer and the action head (last MaxViT stage width)."""
        return self.stage_dims[-1]

    @property
    def feature_map_sizes(self) -> tuple[int, ...]:
        """Side of the square feature map in each MaxViT stage."""
        return tuple(self.image_size // 2 ** (i + 2) for i in range(len(self.depth)))

    @property
    def tokens_per_window(self) -> int:
        return self.num_frames * self.num_learned_tokens

    # ---- construction -----------------------------------------------------------------------------

    def replace(self, **changes) -> RT1Config:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain dict (JSON-friendly: depth becomes a list), without the run-time-only fields
        (activation_checkpointing): what checkpoints store and resuming compares."""
        out = dataclasses.asdict(self)
        out["depth"] = list(self.depth)
        for name in RUNTIME_ONLY_FIELDS:
            del out[name]
        return out

    @classmethod
    def from_dict(cls, values: dict) -> RT1Config:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown RT1Config fields {unknown}; known fields: {sorted(known)}")
        return cls(**values)

    @classmethod
    def preset(cls, name: str, **overrides) -> RT1Config:
        """The model of the named preset (see `PRESETS`), with optional field overrides."""
        config = get_preset(name).model
        return config.replace(**overrides) if overrides else config


# ---- the training run -----------------------------------------------------------------------------

OPTIMIZERS = ("sgd", "adamw")
LOSS_REDUCTIONS = ("mean", "sum_frames_mean_tokens")
AMP_MODES = ("off", "fp16", "bf16")
DEVICES = ("auto", "cpu", "cuda")


def option(default, help: str, *, group: str, flag: str | None = None, choices=None, per_preset: bool = False,
           required: bool = False):
    """A TrainConfig field with its command-line metadata (read by rt1.train.cli)."""
    return field(default=default, metadata={"help": help, "group": group, "flag": flag, "choices": choices,
                                            "per_preset": per_preset, "required": required})


@dataclass(frozen=True)
class TrainConfig:
    """Every training setting. Fields marked per_preset default to the preset's value (see PRESETS)."""

    # data (every path comes from the command line)
    data_dir: Path = option(None, "directory of preprocessed files (stage 2 output)", group="data", required=True)
    train_index: Path = option(None, "train_idx_{N}.csv from data_emerge.py", group="data", required=True)
    val_index: Path | None = option(None, "val_idx_{M}.csv from data_emerge.py (none: no validation)", group="data")
    num_workers: int = option(2, "DataLoader worker processes per training process", group="data")
    augment: bool | None = option(None, "RT-1's random shift of training windows", group="data", per_preset=True)
    shuffle: bool = option(True, "shuffle training windows every epoch (DistributedSampler, reseeded per epoch)",
                           group="data")
    # model
    preset: str = option("original", "model preset and its training defaults", group="model", choices=None)
    cond_drop_prob: float | None = option(None, "probability of training a window without its instruction "
                                                "(classifier-free guidance; none: the preset's)", group="model")
    sync_bn: bool = option(True, "SyncBatchNorm across processes; only with NCCL/CUDA, ignored with a warning on CPU",
                           group="model", flag="--syncBN")
    freeze_bn: bool = option(False, "BatchNorm layers use their running statistics and do not update them",
                             group="model")
    compile: bool = option(False, "torch.compile the model", group="model")
    activation_checkpointing: bool = option(False, "recompute each MaxViT block's and transformer layer's "
                                                   "activations in the backward pass instead of storing them "
                                                   "(same gradients; far less memory, more step time)",
                                            group="model")
    # optimisation
    epochs: int | None = option(None, "epochs", group="optimisation", per_preset=True)
    batch_size: int | None = option(None, "windows per process per micro-batch", group="optimisation",
                                    per_preset=True)
    grad_accum: int = option(1, "micro-batches per optimizer step", group="optimisation")
    loss_reduction: str | None = option(None, "what the optimizer minimises: mean (the mean cross-entropy over all "
                                              "tokens) or sum_frames_mean_tokens (the original's: per-frame token "
                                              "mean summed over the batch's frames, 48x the mean at batch 8); the "
                                              "logged loss is always the mean", group="optimisation",
                                        choices=LOSS_REDUCTIONS, per_preset=True)
    optimizer: str | None = option(None, "sgd (with --momentum) or adamw", group="optimisation",
                                   choices=OPTIMIZERS, per_preset=True)
    lr: float | None = option(None, "learning rate per process; the optimizer uses lr x number of processes, as the "
                                    "original", group="optimisation", per_preset=True)
    lrf: float = option(0.1, "final lr as a fraction of the initial one; per-step cosine decay", group="optimisation")
    weight_decay: float | None = option(None, "weight decay", group="optimisation", per_preset=True)
    momentum: float = option(0.9, "SGD momentum", group="optimisation")
    clip_grad_norm: float | None = option(None, "clip the gradient norm to this (none: no clipping)",
                                          group="optimisation")
    amp: str = option("off", "mixed precision: fp16 (with a GradScaler, e.g. V100), bf16 (Ampere+, CPU) or off",
                      group="optimisation", choices=AMP_MODES)
    max_steps: int | None = option(None, "stop after this many optimizer steps in total (the lr schedule then spans "
                                         "them); writes a resumable checkpoint where it stops", group="optimisation")
    seed: int = option(0, "seed of weights, data order and augmentation", group="optimisation")
    # output
    save_dir: Path | None = option(None, "checkpoints, metrics.jsonl and TensorBoard events (none: "
                                         "save/{model}_{describe}: save/rt1_ddp for the original preset, "
                                         "save/rt1_paper_ddp, save/rt1_tiny_ddp)", group="output")
    describe: str = option("ddp", "run name used in the default --save-dir", group="output")
    resume: Path | None = option(None, "checkpoint to resume from (none: the newest checkpoint-*.pt in --save-dir, "
                                       "if any)", group="output")
    keep_checkpoints: int = option(3, "checkpoints kept", group="output")
    save_every: int = option(0, "also save every N optimizer steps, overwriting the current epoch's "
                                "checkpoint-{epoch}.pt (resumable mid-epoch); 0: only at the end of each epoch",
                             group="output")
    log_every: int = option(10, "optimizer steps between TensorBoard/progress updates and, when the progress bar "
                                "is off, a log line (metrics.jsonl gets every step)", group="output")
    val_every: int = option(1, "epochs between validations; the last epoch always validates; 0 = never",
                            group="output")
    progress: bool = option(True, "tqdm progress bar on rank 0 when stderr is a terminal (otherwise a log line "
                                  "every --log-every steps carries the progress)", group="output")
    tensorboard: bool = option(True, "TensorBoard events in --save-dir", group="output")
    # processes
    device: str = option("auto", "auto: cuda:LOCAL_RANK when CUDA is available, else cpu", group="processes",
                         choices=DEVICES)
    dist_timeout: float = option(900.0, "seconds a process waits for the others in a collective before failing",
                                 group="processes")

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"TrainConfig.preset {self.preset!r} is not a preset; available: {sorted(PRESETS)}")
        for f in dataclasses.fields(self):
            if f.metadata.get("per_preset") and getattr(self, f.name) is None:
                object.__setattr__(self, f.name, PRESETS[self.preset].train[f.name])
        for name in ("data_dir", "train_index", "val_index", "save_dir", "resume"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                if not isinstance(value, str) or not value:
                    raise ConfigError(f"TrainConfig.{name} must be a path, got {value!r}")
                object.__setattr__(self, name, Path(value))
        if self.save_dir is None:
            object.__setattr__(self, "save_dir", Path("save") / f"{PRESETS[self.preset].run_name}_{self.describe}")
        self._validate()

    def _validate(self) -> None:
        def fail(name: str, rule: str) -> None:
            raise ConfigError(f"TrainConfig.{name} {rule}, got {getattr(self, name)!r}")

        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for name in ("data_dir", "train_index"):
            if getattr(self, name) is None:
                fail(name, "is required")
        for name in ("epochs", "batch_size", "grad_accum", "log_every", "keep_checkpoints"):
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
        if self.cond_drop_prob is not None and (not is_num(self.cond_drop_prob) or not 0 <= self.cond_drop_prob <= 1):
            fail("cond_drop_prob", "must be in [0, 1] (or None for the preset's)")
        if not is_num(self.dist_timeout) or self.dist_timeout <= 0:
            fail("dist_timeout", "must be a positive number of seconds")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                fail(f.name, f"must be one of {', '.join(choices)}")
        if not isinstance(self.describe, str) or not self.describe or "/" in self.describe:
            fail("describe", "must be a non-empty name without '/'")
        for f in dataclasses.fields(self):
            if f.type in ("bool", "bool | None") and not isinstance(getattr(self, f.name), bool):
                fail(f.name, "must be True or False")
        # Paths that must exist now (save_dir is created by the trainer).
        if not self.data_dir.is_dir():
            fail("data_dir", "must be an existing directory of preprocessed files")
        for name in ("train_index", "val_index", "resume"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                fail(name, "must be an existing file")
        if self.save_dir.exists() and not self.save_dir.is_dir():
            fail("save_dir", "exists and is not a directory")

    @property
    def model_config(self) -> RT1Config:
        """The preset's model, with this run's condition dropout when given and activation checkpointing."""
        model = PRESETS[self.preset].model.replace(activation_checkpointing=self.activation_checkpointing)
        return model if self.cond_drop_prob is None else model.replace(cond_drop_prob=self.cond_drop_prob)

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain types only (paths as strings): stored in checkpoints, loadable with weights_only=True."""
        return {f.name: str(v) if isinstance(v := getattr(self, f.name), Path) else v for f in dataclasses.fields(self)}

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]


# ---- presets --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """A named model configuration together with the training defaults that go with it."""

    name: str
    description: str
    run_name: str  # {run_name}_{describe} is the default save directory
    model: RT1Config
    train: MappingProxyType  # TrainConfig per_preset field -> value

    def __post_init__(self) -> None:
        per_preset = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("per_preset")}
        if set(self.train) != per_preset:
            raise ConfigError(f"preset {self.name!r} must give exactly the per-preset training fields "
                              f"{sorted(per_preset)}, got {sorted(self.train)}")


def _preset(name: str, run_name: str, description: str, model: RT1Config, **train) -> Preset:
    return Preset(name, description, run_name, model, MappingProxyType(train))


PRESETS: dict[str, Preset] = {p.name: p for p in (
    # robotic-transformer-pytorch 0.2.3 at the original pipeline's configuration, as it was trained: memory
    # key/values, mean-pooling TokenLearner, raw-input transformer keys/values, raw pixels, and no condition
    # dropout (the original called model(video, texts), whose cond_drop_prob is 0). Its text stem took T5-base
    # (768-d); rt1.model.convert_original sets text_embed_dim (cond_dim = 2x) from a checkpoint.
    # Its update: SGD momentum 0.9, lr 1e-4 x world size, weight decay 1e-3, the loss summed over frames, no
    # augmentation.
    _preset("original", "rt1", "the original pipeline's model function and run, exactly (224x224, ~245 M parameters)",
            RT1Config(attention_memory_kv=4, token_learner_pooling="mean", transformer_kv_source="input",
                      pixel_scaling="raw", cond_drop_prob=0.0),
            optimizer="sgd", lr=1e-4, weight_decay=1e-3, batch_size=8, epochs=100,
            loss_reduction="sum_frames_mean_tokens", augment=False),
    # The original's sizes and run with the RT-1 paper's choices (Google's TokenLearner, ImageNet input
    # scaling, condition dropout 0.2 so the null embedding that guidance needs is trained).
    _preset("rt1", "rt1_paper", "the original's sizes with the RT-1 paper's choices (224x224, ~244 M parameters)",
            RT1Config(), optimizer="sgd", lr=1e-4, weight_decay=1e-3, batch_size=8, epochs=100,
            loss_reduction="mean", augment=True),
    # Trains on 2 CPU cores: a batch of 8 windows x 6 frames x 64 x 64 takes ~0.1 s forward + backward on an idle
    # machine. Optimisation tuned on the bundled dataset (tests/test_train_ddp.py::test_tiny_preset_learns...):
    # SGD at 1e-4 barely moves a fresh tiny model in a few hundred steps; AdamW at 1e-3 per process learns the
    # gripper from the image after ~5000-6500 windows (2e-3 and 3e-3 did not within that budget, 5e-4 was slower).
    # The tiny model's learning is sample-bound, so 16 windows per process use the CPU better than 8.
    _preset("tiny", "rt1_tiny", "small enough to train on 2 CPU cores in minutes (64x64, ~0.68 M parameters)",
            RT1Config(image_size=64, conv_stem_dim=16, dim=32, dim_head=16, depth=(1, 1), attention_window=4,
                      mbconv_expansion=2, dropout=0.0, transformer_depth=2, transformer_heads=4,
                      transformer_dim_head=16, cond_dim=128, film_mult=2, token_learner_ff_mult=1),
            optimizer="adamw", lr=1e-3, weight_decay=1e-2, batch_size=16, epochs=10, loss_reduction="mean",
            augment=True),
    # The demo's recipe (issue #18): the tiny model on 32x32 frames (~4x the windows per CPU-second of 64x64),
    # no condition dropout (there is no guidance in the demo, and dropping the instruction 20% of the time
    # hides the only signal of which object to go to), no random shift. lr 1e-3 and batch 8 per process: under
    # the demo's 2 processes that is lr 2e-3 on 16 windows per step, the single-process setting measured.
    _preset("demo", "rt1_demo", "the demo's recipe: the tiny model on 32x32 frames, no condition dropout, no shift",
            RT1Config(image_size=32, conv_stem_dim=16, dim=32, dim_head=16, depth=(1, 1), attention_window=4,
                      mbconv_expansion=2, dropout=0.0, transformer_depth=2, transformer_heads=4,
                      transformer_dim_head=16, cond_dim=128, film_mult=2, token_learner_ff_mult=1, cond_drop_prob=0.0),
            optimizer="adamw", lr=1e-3, weight_decay=1e-2, batch_size=8, epochs=10, loss_reduction="mean",
            augment=False),
)}
DEFAULT_PRESET = "original"  # the original's command lines reproduce the original
# The only places these numbers are defined: the presets' models.
DEFAULT_IMAGE_SIZE = PRESETS[DEFAULT_PRESET].model.image_size
DEFAULT_WINDOW = PRESETS[DEFAULT_PRESET].model.num_frames


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available presets: {sorted(PRESETS)}")
    return PRESETS[name]
