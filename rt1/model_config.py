"""The model's configuration, `RT1Config`: every hyper-parameter of RT-1, frozen and validated on construction.

Torch-free, like all of the configuration (`rt1.config` holds the training run and the presets, and
re-exports these names). The tokenizer's 11 action tokens and 256 bins come from `rt1.actions`, the 512-d
instruction embedding from `rt1.rlds_spec`. Errors are `ConfigError` (a `ValueError`) naming the field and
the bad value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

from rt1.actions import NUM_ACTION_TOKENS, NUM_BINS
from rt1.errors import RT1Error
from rt1.rlds_spec import EMBEDDING_DIM


class ConfigError(RT1Error, ValueError):
    """A configuration value is invalid; the message names the field and the value."""


# ---- the model ------------------------------------------------------------------------------------

TOKEN_LEARNER_POOLINGS = ("softmax", "mean")
TRANSFORMER_KV_SOURCES = ("modulated", "input")
PIXEL_SCALINGS = ("imagenet", "raw")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RUNTIME_ONLY_FIELDS = ("activation_checkpointing",)  # how to compute, not what: not compared, not persisted


# Fields added after checkpoints were first written, each group at once, whose defaults are the network those
# checkpoints hold: a saved dict may lack a whole group (it predates it), never part of one.
LEGACY_FIELD_GROUPS = (
    ("attention_memory_kv", "token_learner_pooling", "transformer_kv_source", "pixel_scaling"),
    ("feature_position_embedding",),
)


def check_complete(cls, values: dict, legacy_groups=()) -> None:
    """A saved model_config names every field (but the run-time-only ones): a missing one would silently
    become its default, another model. Raises ConfigError naming the first missing field."""
    names = [f.name for f in dataclasses.fields(cls) if f.name not in RUNTIME_ONLY_FIELDS]
    absent = {name for group in legacy_groups if not set(group) & set(values) for name in group}
    missing = [name for name in names if name not in values and name not in absent]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConfigError(f"model_config has no field {missing[0]!r}{more}: a saved config names every field")


@dataclass(frozen=True)
class RT1Config:
    """Every hyper-parameter of the RT-1 model; the defaults are the original configuration."""

    model_type: ClassVar[str] = "maxvit"  # not written by to_dict: an untagged dict is this family

    # image encoder (MaxViT)
    image_size: int = 224  # square input images, H = W = image_size
    channels: int = 3  # colour channels of the input frames
    conv_stem_dim: int = 64  # width of the stride-2 convolutional stem
    dim: int = 96  # width of the first MaxViT stage; stage i has dim * 2**i
    dim_head: int = 32  # MaxViT attention head width (heads = stage width / dim_head)
    depth: tuple[int, ...] = (2, 2, 5, 2)  # MaxViT blocks per stage; every stage halves the feature map
    attention_window: int = 7  # block and grid attention over attention_window x attention_window cells
    mbconv_expansion: int = 4  # MBConv's inverted-bottleneck width = expansion * stage width
    mbconv_shrinkage: float = 0.25  # squeeze-excitation hidden width = shrinkage * expanded width
    dropout: float = 0.1  # MaxViT attention and feed-forward dropout
    attention_memory_kv: int = 0  # learned memory key/value pairs per MaxViT attention (original: 4)
    # action head: fixed by the tokenizer (rt1.actions), checked
    num_actions: int = NUM_ACTION_TOKENS  # action tokens per frame (11)
    num_bins: int = NUM_BINS  # bins per action token (256)
    # temporal transformer
    num_frames: int = 6  # frames per training window (the history length); data_emerge's default
    transformer_depth: int = 6  # decoder layers of the temporal transformer
    transformer_heads: int = 8  # query heads; keys and values use one shared head (multi-query)
    transformer_dim_head: int = 64  # width of each transformer attention head
    transformer_dropout: float = 0.0  # transformer attention and feed-forward dropout
    ff_mult: int = 4  # feed-forward hidden width multiplier (MaxViT and transformer)
    num_learned_tokens: int = 8  # TokenLearner tokens per frame
    token_learner_ff_mult: int = 2  # hidden width multiplier of TokenLearner's attention-map MLP
    token_learner_pooling: str = "softmax"  # "softmax" (Google, with LayerNorm) | "mean" (original, no norm)
    # A learned embedding of each feature-map position, added before TokenLearner pools the map, so the tokens
    # say where what they pooled is (MaxViT's relative attention bias and the pooling are translation-blind).
    # Neither the original nor RT-1 has it; the demo preset does.
    feature_position_embedding: bool = False
    transformer_kv_source: str = (
        "modulated"  # "modulated": k, v from FiLM(LN(x)) | "input": from x (original)
    )
    # text conditioning (FiLM + classifier-free guidance)
    text_embed_dim: int = EMBEDDING_DIM  # the dataset's Universal Sentence Encoder embedding (512)
    cond_dim: int = 1024  # width of the shared text MLP stem feeding every FiLM layer
    film_mult: int = 4  # hidden width of each FiLM generator = film_mult * its feature width
    cond_drop_prob: float = 0.2  # training probability of replacing the text by the null embedding
    # input
    pixel_scaling: str = "imagenet"  # uint8 pixels -> model input: "imagenet" mean/std | "raw" 0..255 floats
    # training-time trade-off, not part of the model function: recompute each MaxViT block's and transformer
    # layer's activations in the backward pass instead of storing them (same outputs and gradients, less
    # memory, more time). Left out of equality and of to_dict(), so checkpoints written with and without it
    # are interchangeable (resume, load_model).
    activation_checkpointing: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        # Accept lists (e.g. from JSON/YAML) for `depth`, store a tuple so the config stays hashable.
        if not isinstance(self.depth, tuple):
            object.__setattr__(self, "depth", tuple(self.depth))
        self._check_types()
        self._check_ranges()
        self._check_feature_maps()

    _POSITIVE: ClassVar[tuple[str, ...]] = (
        "image_size",
        "channels",
        "conv_stem_dim",
        "dim",
        "dim_head",
        "attention_window",
        "mbconv_expansion",
        "num_actions",
        "num_bins",
        "num_frames",
        "transformer_depth",
        "transformer_heads",
        "transformer_dim_head",
        "ff_mult",
        "num_learned_tokens",
        "token_learner_ff_mult",
        "text_embed_dim",
        "cond_dim",
        "film_mult",
    )

    def _check_types(self) -> None:
        """Integers, booleans and named choices are of their kind; the action head is the tokenizer's."""
        for name in self._POSITIVE:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"RT1Config.{name} must be a positive integer, got {value!r}")
        for name in ("activation_checkpointing", "feature_position_embedding"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"RT1Config.{name} must be True or False, got {getattr(self, name)!r}")
        value = self.attention_memory_kv
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"RT1Config.attention_memory_kv must be a non-negative integer, got {value!r}")
        for name, choices in (
            ("token_learner_pooling", TOKEN_LEARNER_POOLINGS),
            ("transformer_kv_source", TRANSFORMER_KV_SOURCES),
            ("pixel_scaling", PIXEL_SCALINGS),
        ):
            value = getattr(self, name)
            if value not in choices:
                raise ConfigError(
                    f"RT1Config.{name} must be one of {', '.join(map(repr, choices))}, got {value!r}"
                )
        if (self.num_actions, self.num_bins) != (NUM_ACTION_TOKENS, NUM_BINS):
            raise ConfigError(
                f"RT1Config.num_actions/num_bins must be the tokenizer's {NUM_ACTION_TOKENS}/{NUM_BINS} "
                f"(rt1.actions), got {self.num_actions}/{self.num_bins}"
            )

    def _check_ranges(self) -> None:
        """The stages' depths, the probabilities and the squeeze-excitation width are in range."""
        if len(self.depth) == 0 or any(
            not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in self.depth
        ):
            raise ConfigError(
                f"RT1Config.depth must be a non-empty tuple of positive integers, got {self.depth!r}"
            )
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

    def _check_feature_maps(self) -> None:
        """Every stage's width splits into heads, and every feature map halves and splits into windows."""
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

    def pixel_processing(self) -> dict:
        """What the network does to the uint8 frames it is given (an export's `image_preprocessing` says it)."""
        if self.pixel_scaling == "imagenet":
            return {
                "pixel_scaling": "imagenet",
                "mean": list(IMAGENET_MEAN),
                "std": list(IMAGENET_STD),
                "formula": "x = (pixel / 255 - mean) / std, channels RGB",
            }
        return {"pixel_scaling": "raw", "formula": "x = float(pixel), 0..255"}

    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) of the uint8 frames the model takes: the stored frames and the policy's images."""
        return (self.image_size, self.image_size)

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
        check_complete(cls, values, LEGACY_FIELD_GROUPS)
        return cls(**values)


__all__ = [
    "ConfigError",
    "RT1Config",
    "TOKEN_LEARNER_POOLINGS",
    "TRANSFORMER_KV_SOURCES",
    "PIXEL_SCALINGS",
    "RUNTIME_ONLY_FIELDS",
]
