"""RT1Config: every hyper-parameter of the RT-1 model in one typed, validated, frozen dataclass.

The sizes default to the configuration of the original PyTorch RT-1 pipeline (MaxViT + TokenLearner +
Transformer, see `docs`/the reference spec); the dataclass defaults are the `rt1` preset, so a
model_config saved before the variant fields existed loads as the model it was. `PRESETS`:

    original  the original pipeline's model function exactly: robotic-transformer-pytorch 0.2.3 at the
              original's sizes (`rt1.model.convert_original` converts its checkpoints), raw 0..255 pixels,
              no condition dropout
    rt1       the same sizes with the RT-1 paper's / Google's choices (~244 M parameters)
    tiny      a model small enough to train on 2 CPU cores in minutes (64 x 64 input, ~0.68 M parameters)

The three functional differences between `original` and `rt1` (each field has both variants):

    attention_memory_kv    4 / 0: learned memory key/value pairs prepended in every MaxViT attention
    token_learner_pooling  "mean" / "softmax": tokens = mean over positions of x * MLP(x), no norm /
                           softmax over positions of MLP(LayerNorm(x)) weighting x (Google's TokenLearner)
    transformer_kv_source  "input" / "modulated": transformer keys and values from the raw layer input
                           (only the queries see LayerNorm + FiLM) / all of q, k, v from FiLM(LayerNorm(x))

plus the input scaling `pixel_scaling` ("raw" 0..255 floats / "imagenet" mean-std, `normalize_video`)
and `cond_drop_prob` (0.0 / 0.2).

`RT1Config.preset(name, **overrides)` returns a preset, optionally with some fields replaced.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from rt1.actions import NUM_ACTION_TOKENS, NUM_BINS

TOKEN_LEARNER_POOLINGS = ("softmax", "mean")
TRANSFORMER_KV_SOURCES = ("modulated", "input")
PIXEL_SCALINGS = ("imagenet", "raw")


@dataclass(frozen=True)
class RT1Config:
    # image encoder (MaxViT)
    image_size: int = 224               # square input images, H = W = image_size
    channels: int = 3
    conv_stem_dim: int = 64             # width of the stride-2 convolutional stem
    dim: int = 96                       # width of the first MaxViT stage; stage i has dim * 2**i
    dim_head: int = 32                  # MaxViT attention head width (heads = stage width / dim_head)
    depth: tuple[int, ...] = (2, 2, 5, 2)  # MaxViT blocks per stage; every stage halves the feature map
    window_size: int = 7                # block and grid attention window (window_size x window_size)
    mbconv_expansion: int = 4
    mbconv_shrinkage: float = 0.25      # squeeze-excitation hidden width = shrinkage * expanded width
    dropout: float = 0.1                # MaxViT attention and feed-forward dropout
    attention_memory_kv: int = 0        # learned memory key/value pairs per MaxViT attention (original: 4)
    # action head
    num_actions: int = NUM_ACTION_TOKENS
    num_bins: int = NUM_BINS
    # temporal transformer
    num_frames: int = 6                 # frames per training window (the history length)
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
    text_embed_dim: int = 512           # the dataset's Universal Sentence Encoder embedding
    cond_dim: int = 1024                # width of the shared text MLP stem feeding every FiLM layer
    film_mult: int = 4                  # hidden width of each FiLM generator = film_mult * its feature width
    cond_drop_prob: float = 0.2         # training probability of replacing the text by the null embedding
    # input
    pixel_scaling: str = "imagenet"     # uint8 pixels -> model input: "imagenet" mean/std | "raw" 0..255 floats

    def __post_init__(self) -> None:
        # Accept lists (e.g. from JSON/YAML) for `depth`, store a tuple so the config stays hashable.
        if not isinstance(self.depth, tuple):
            object.__setattr__(self, "depth", tuple(self.depth))
        positive = (
            "image_size", "channels", "conv_stem_dim", "dim", "dim_head", "window_size", "mbconv_expansion",
            "num_actions", "num_bins", "num_frames", "transformer_depth", "transformer_heads",
            "transformer_dim_head", "ff_mult", "num_learned_tokens", "token_learner_ff_mult",
            "text_embed_dim", "cond_dim", "film_mult",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"RT1Config.{name} must be a positive integer, got {value!r}")
        value = self.attention_memory_kv
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"RT1Config.attention_memory_kv must be a non-negative integer, got {value!r}")
        for name, choices in (("token_learner_pooling", TOKEN_LEARNER_POOLINGS),
                              ("transformer_kv_source", TRANSFORMER_KV_SOURCES), ("pixel_scaling", PIXEL_SCALINGS)):
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"RT1Config.{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
        if len(self.depth) == 0 or any(not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in self.depth):
            raise ValueError(f"RT1Config.depth must be a non-empty tuple of positive integers, got {self.depth!r}")
        for name in ("dropout", "transformer_dropout", "cond_drop_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"RT1Config.{name} must be in [0, 1], got {value!r}")
        if not 0.0 < self.mbconv_shrinkage <= 1.0:
            raise ValueError(f"RT1Config.mbconv_shrinkage must be in (0, 1], got {self.mbconv_shrinkage!r}")
        if int(self.mbconv_expansion * self.dim * self.mbconv_shrinkage) < 1:
            raise ValueError(
                f"RT1Config.mbconv_shrinkage={self.mbconv_shrinkage} leaves no squeeze-excitation width "
                f"for expanded width {self.mbconv_expansion * self.dim}"
            )
        for stage, width in enumerate(self.stage_dims):
            if width % self.dim_head:
                raise ValueError(
                    f"MaxViT stage {stage} has width {width} (dim={self.dim} * 2**{stage}), "
                    f"which dim_head={self.dim_head} does not divide"
                )
        # The stem halves the image, then every stage halves it again (stride-2 MBConv).
        size = self.image_size
        if size % 2:
            raise ValueError(f"image_size={size} must be even (the convolutional stem has stride 2)")
        size //= 2
        for stage in range(len(self.depth)):
            if size % 2:
                raise ValueError(
                    f"image_size={self.image_size}: the feature map entering MaxViT stage {stage} is "
                    f"{size}x{size}, which the stride-2 downsampling cannot halve"
                )
            size //= 2
            if size % self.window_size:
                raise ValueError(
                    f"image_size={self.image_size}: MaxViT stage {stage} has a {size}x{size} feature map, "
                    f"which window_size={self.window_size} does not divide"
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

    # ---- presets ----------------------------------------------------------------------------------

    def replace(self, **changes) -> RT1Config:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain dict (JSON-friendly: depth becomes a list)."""
        out = dataclasses.asdict(self)
        out["depth"] = list(self.depth)
        return out

    @classmethod
    def from_dict(cls, values: dict) -> RT1Config:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown RT1Config fields {unknown}; known fields: {sorted(known)}")
        return cls(**values)

    @classmethod
    def preset(cls, name: str, **overrides) -> RT1Config:
        """The named preset (see `PRESETS`), with optional field overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown RT1 preset {name!r}; available presets: {sorted(PRESETS)}")
        config = PRESETS[name]
        return config.replace(**overrides) if overrides else config


PRESETS: dict[str, RT1Config] = {
    # robotic-transformer-pytorch 0.2.3 at the original pipeline's configuration, as it was trained:
    # memory key/values, mean-pooling TokenLearner, raw-input transformer keys/values, raw pixels, and
    # no condition dropout (the original called model(video, texts), whose cond_drop_prob is 0). The
    # original's text stem takes T5-base (768-d); the converter sets text_embed_dim (cond_dim = 2x).
    "original": RT1Config(
        attention_memory_kv=4,
        token_learner_pooling="mean",
        transformer_kv_source="input",
        pixel_scaling="raw",
        cond_drop_prob=0.0,
    ),
    # The original's sizes with the RT-1 paper's choices (Google's TokenLearner, ImageNet input scaling,
    # condition dropout 0.2 so the null embedding that guidance needs is trained).
    "rt1": RT1Config(),
    # Trains on 2 CPU cores: a batch of 8 windows x 6 frames x 64 x 64 takes ~0.1 s forward + backward
    # on an idle machine (0.13 s with mbconv_expansion=4; much more while other jobs share the cores).
    "tiny": RT1Config(
        image_size=64,
        conv_stem_dim=16,
        dim=32,
        dim_head=16,
        depth=(1, 1),
        window_size=4,
        mbconv_expansion=2,
        dropout=0.0,
        transformer_depth=2,
        transformer_heads=4,
        transformer_dim_head=16,
        cond_dim=128,
        film_mult=2,
        token_learner_ff_mult=1,
    ),
}
