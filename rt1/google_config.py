"""`GoogleRT1Config`: Google's RT-1 network (robotics_transformer, FiLM-EfficientNet + TokenLearner +
decoder over image and action tokens), frozen and validated on construction.

Torch-free, like all configuration. The defaults are rt1main's (Google's released checkpoint,
`configs/transformer_mixin.gin` and `trained_checkpoints/rt1main/policy_specs.pbtxt` of
google-research/robotics_transformer at commit 4569641); each field says which of Google's names it is.
Errors are `ConfigError` naming the field and the value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

from rt1.actions import ACTION_KEYS, NUM_ACTION_TOKENS, check_action_order
from rt1.model_config import RUNTIME_ONLY_FIELDS, ConfigError, check_complete
from rt1.rlds_spec import EMBEDDING_DIM, IMAGE_SHAPE

# Fixed by Google's code: the 1x1 projection after the EfficientNet and the last FiLM layer have 512
# channels (pretrained_efficientnet_encoder.py L66, L78), and the FiLM context is the 512-d instruction
# embedding (film_efficientnet_encoder.py L419).
IMAGE_TOKEN_WIDTH = 512


@dataclass(frozen=True)
class GoogleRT1Config:
    """Every hyper-parameter of Google's RT-1 network; the defaults are rt1main's."""

    model_type: ClassVar[str] = "google_rt1"

    # frames: uint8 at the camera's size (rt1main's image spec), resized inside the network
    image_height: int = IMAGE_SHAPE[0]
    image_width: int = IMAGE_SHAPE[1]
    num_frames: int = 6  # time_sequence_length: frames per window, the policy's history
    encoder_input_size: int = 300  # the EfficientNet's square input (Google's _SIZES['b3'])
    # FiLM-EfficientNet (EfficientNet-B3: width 1.2, depth 1.4)
    width_coefficient: float = 1.2
    depth_coefficient: float = 1.4
    drop_connect_rate: float = 0.2  # training-time stochastic depth, rising linearly over the blocks
    # TokenLearner (image_tokenizer.py: 8 tokens, bottleneck 64)
    num_learned_tokens: int = 8
    token_learner_bottleneck: int = 64
    # decoder transformer
    num_layers: int = 8
    num_heads: int = 8
    key_dim: int = 128  # Google's layer_size: the width of one attention head
    model_dim: int = 512  # Google's feed_forward_size: the transformer's width
    dropout: float = 0.1  # attention probabilities and the feed-forward output (dropout_rate)
    # actions and text
    num_actions: int = NUM_ACTION_TOKENS  # tokens per step, one per float dimension, one for terminate
    num_bins: int = 256  # vocab_size
    text_embed_dim: int = EMBEDDING_DIM  # the FiLM context: the dataset's 512-d instruction embedding
    # which RLDS action key each of the network's 11 output slots predicts (Google's gin ACTION_ORDER): a fact of
    # the weights. The model's logits always come out in rt1.actions' order (the slots permuted), so the data,
    # the loss and the policy never see it. Our own runs: rt1.actions' order; a converted rt1main: Google's
    # (rt1.model.google.convert_google). to_dict() leaves it out when it is rt1.actions' order.
    action_order: tuple[str, ...] = ACTION_KEYS
    # how to compute, not what (see RT1Config): recompute each EfficientNet block and transformer layer
    # in the backward pass
    activation_checkpointing: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        positive = (
            "image_height",
            "image_width",
            "num_frames",
            "encoder_input_size",
            "num_learned_tokens",
            "token_learner_bottleneck",
            "num_layers",
            "num_heads",
            "key_dim",
            "model_dim",
            "num_actions",
            "num_bins",
            "text_embed_dim",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"GoogleRT1Config.{name} must be a positive integer, got {value!r}")
        for name in ("width_coefficient", "depth_coefficient"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"GoogleRT1Config.{name} must be a positive number, got {value!r}")
        for name in ("drop_connect_rate", "dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ConfigError(f"GoogleRT1Config.{name} must be in [0, 1), got {value!r}")
        try:
            object.__setattr__(self, "action_order", check_action_order(self.action_order))
        except ValueError as e:
            raise ConfigError(f"GoogleRT1Config.action_order: {e}") from None
        if not isinstance(self.activation_checkpointing, bool):
            raise ConfigError(
                f"GoogleRT1Config.activation_checkpointing must be True or False, "
                f"got {self.activation_checkpointing!r}"
            )
        if self.text_embed_dim != IMAGE_TOKEN_WIDTH:
            raise ConfigError(
                f"GoogleRT1Config.text_embed_dim must be {IMAGE_TOKEN_WIDTH} (Google's FiLM context), "
                f"got {self.text_embed_dim}"
            )
        if self.num_actions != NUM_ACTION_TOKENS:
            raise ConfigError(
                f"GoogleRT1Config.num_actions must be the tokenizer's {NUM_ACTION_TOKENS} (rt1.actions), "
                f"got {self.num_actions}"
            )
        if self.encoder_input_size < 32:
            raise ConfigError(
                f"GoogleRT1Config.encoder_input_size={self.encoder_input_size}: the EfficientNet halves "
                "its input five times and needs at least 32 pixels"
            )

    # ---- derived values ---------------------------------------------------------------------------

    def pixel_processing(self) -> dict:
        """What the network does to the uint8 frames it is given (an export's `image_preprocessing` says it)."""
        size = self.encoder_input_size
        return {
            "pixel_scaling": "google",
            "formula": f"x = pixel / 255, bilinear resize to {size}x{size} (half-pixel centres, no antialiasing), "
            "then (x - mean) / sqrt(variance) / sqrt((0.229, 0.224, 0.225)) with the network's own "
            "Normalization mean and variance (weights)",
        }

    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) of the uint8 frames the model takes: the stored frames and the policy's images."""
        return (self.image_height, self.image_width)

    @property
    def embed_dim(self) -> int:
        """Width of the image tokens (the 1x1 projection after the EfficientNet)."""
        return IMAGE_TOKEN_WIDTH

    @property
    def tokens_per_step(self) -> int:
        """Tokens per frame in the transformer's sequence: the frame's image tokens, then its action slots."""
        return self.num_learned_tokens + self.num_actions

    @property
    def feature_map_size(self) -> int:
        """Side of the EfficientNet's last feature map: five floor-halvings of encoder_input_size (300 -> 9)."""
        size = self.encoder_input_size
        for _ in range(5):
            size //= 2
        return size

    # ---- construction -----------------------------------------------------------------------------

    def replace(self, **changes) -> GoogleRT1Config:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain dict with the family tag `model_type`, without the run-time-only fields."""
        out = {"model_type": self.model_type, **dataclasses.asdict(self)}
        for name in RUNTIME_ONLY_FIELDS:
            del out[name]
        out["action_order"] = list(self.action_order)
        return out

    @classmethod
    def from_dict(cls, values: dict) -> GoogleRT1Config:
        values = dict(values)
        tag = values.pop("model_type", cls.model_type)
        if tag != cls.model_type:
            raise ConfigError(f"model_type {tag!r} is not {cls.model_type!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown GoogleRT1Config fields {unknown}; known fields: {sorted(known)}")
        check_complete(cls, values)
        return cls(**values)
