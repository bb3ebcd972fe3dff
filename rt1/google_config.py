"""`GoogleRT1Config`: Google's RT-1 network (robotics_transformer, FiLM-EfficientNet + TokenLearner +
decoder over image and action tokens), frozen and validated on construction.

Torch-free, like all configuration. The defaults are rt1main's (Google's released checkpoint,
`configs/transformer_mixin.gin` and `trained_checkpoints/rt1main/policy_specs.pbtxt` of
google-research/robotics_transformer at commit 4569641); each field says which of Google's names it is.
Errors are `ConfigError` naming the field and the value.

RT-1-X (the Open X-Embodiment release, google-deepmind/open_x_embodiment `models/rt1.py`, JAX/Flax) is a
configuration of the same network: `RTX_CONFIG` (rt1_inference_example.py L150-164). The fields it changes
besides sizes, each with rt1main's value as the default (file:line of the release's models/):

    stride2_padding            "tf_asymmetric" | "same": XLA 'SAME' before stride-2 convolutions
                               (efficientnet.py L276): a 10x10 map from 300x300 where TF has 9x9
    feed_forward               "linear" (one Dense with bias) | "swiglu": w2(swish(w1 y) * w3 y), no biases,
                               hidden width model_dim (rt1.py L56-60)
    image_attends_past_actions False: image tokens do not attend to earlier steps' action slots either
                               (the mask rule of rt1.py L547-549; TF's mask allows it)
    action_token_embedding     False: the action slots are zero vectors with no embedding layer (rt1.py
                               L453-455); TF embeds and zeroes them (its Dense stays in the checkpoint)
    preprocessing              "google" (in-network [0, 1], resize, Normalization weights) | "rtx": frame
                               resized to 300x300, / 255, (x - ImageNet mean) / ImageNet std as constants
                               (rt1_inference_example.py L130-131, rt1.py L153-155; no weights)
    episode_start              "prefix" (the policy runs the frames seen so far) | "zero_frames": the
                               window is filled with all-zero steps (zero image, zero instruction), as the
                               release's training pads every episode (Minimal_Training_Example
                               `pad_initial_zero_steps`), so its RT1Policy always sees 15 frames
    action_order               the RLDS key of each output slot: rt1.actions' ACTION_KEYS (terminate last)
                               | RTX_ACTION_ORDER: terminate_episode, world_vector, rotation_delta,
                               gripper_closedness_action, base_displacement_vertical_rotation,
                               base_displacement_vector (rt1.py L287-305); the logits come out in
                               rt1.actions' order either way (the network permutes its slots)
    world_vector_bound         1.0 | 2.0: world_vector bounds (-b, b) of the action tokenizer
                               (rt1_inference_example.py L162-163)
An invalid terminate token (3..num_bins-1) detokenizes to [0, 0, 1] in both (rt1.actions clips to class 2;
the release's RT1Policy replaces the all-zero one-hot with [0, 0, 1], rt1_inference_example.py L140-144).
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
RTX_INPUT_SIZE = 300  # the release's model takes exactly 300x300 frames (rt1.py L153)
CHOICES = {
    "stride2_padding": ("tf_asymmetric", "same"),
    "feed_forward": ("linear", "swiglu"),
    "preprocessing": ("google", "rtx"),
    "episode_start": ("prefix", "zero_frames"),
}
# RT-1-X's output slots (the release's rt1.py L287-305 hard-codes this order); rt1main's converter defaults to it
RTX_ACTION_ORDER = (
    "terminate_episode",
    "world_vector",
    "rotation_delta",
    "gripper_closedness_action",
    "base_displacement_vertical_rotation",
    "base_displacement_vector",
)


@dataclass(frozen=True)
class GoogleRT1Config:
    """Every hyper-parameter of Google's RT-1 network; the defaults are rt1main's."""

    model_type: ClassVar[str] = "google_rt1"

    # frames: uint8 at the camera's size (rt1main's image spec), resized inside the network
    image_height: int = IMAGE_SHAPE[0]  # height of the frames the network is given (256)
    image_width: int = IMAGE_SHAPE[1]  # width of the frames the network is given (320)
    num_frames: int = 6  # time_sequence_length: frames per window, the policy's history
    encoder_input_size: int = 300  # the EfficientNet's square input (Google's _SIZES['b3'])
    # FiLM-EfficientNet (EfficientNet-B3: width 1.2, depth 1.4)
    width_coefficient: float = 1.2  # EfficientNet's channel multiplier (B3: 1.2)
    depth_coefficient: float = 1.4  # EfficientNet's block-count multiplier (B3: 1.4)
    drop_connect_rate: float = 0.2  # training-time stochastic depth, rising linearly over the blocks
    # TokenLearner (image_tokenizer.py: 8 tokens, bottleneck 64)
    num_learned_tokens: int = 8  # TokenLearner tokens per frame
    token_learner_bottleneck: int = 64  # hidden width of TokenLearner's attention-map MLP
    # decoder transformer
    num_layers: int = 8  # decoder layers of the transformer
    num_heads: int = 8  # attention heads per layer
    key_dim: int = 128  # Google's layer_size: the width of one attention head
    model_dim: int = 512  # Google's feed_forward_size: the transformer's width
    dropout: float = 0.1  # attention probabilities and the feed-forward output (dropout_rate)
    # actions and text
    num_actions: int = NUM_ACTION_TOKENS  # tokens per step, one per float dimension, one for terminate
    num_bins: int = 256  # bins per action token (Google's vocab_size)
    text_embed_dim: int = EMBEDDING_DIM  # the FiLM context: the dataset's 512-d instruction embedding
    # which RLDS action key each of the network's 11 output slots predicts (Google's gin ACTION_ORDER): a fact of
    # the weights. The model's logits always come out in rt1.actions' order (the slots permuted), so the data,
    # the loss and the policy never see it. Our own runs: rt1.actions' order; a converted rt1main: Google's
    # (rt1.model.google.convert_google). to_dict() leaves it out when it is rt1.actions' order.
    action_order: tuple[str, ...] = ACTION_KEYS
    # RT-1-X's differences (module docstring); the defaults are rt1main's
    stride2_padding: str = "tf_asymmetric"  # padding before stride-2 convolutions: TF's | XLA 'SAME' (RT-1-X)
    feed_forward: str = "linear"  # the transformer's feed-forward: one Dense layer | SwiGLU (RT-1-X)
    image_attends_past_actions: bool = True  # image tokens see earlier steps' action tokens (False: RT-1-X)
    action_token_embedding: bool = True  # action slots pass an embedding layer (False: zero vectors, RT-1-X)
    preprocessing: str = "google"  # pixels -> network input: in-network resize | RT-1-X's fixed 300x300
    episode_start: str = "prefix"  # an episode's first steps: the frames so far | zero-padded window
    world_vector_bound: float = 1.0  # world_vector's tokenizer bounds (-b, b)
    # how to compute, not what (see RT1Config): recompute each EfficientNet block and transformer layer
    # in the backward pass
    activation_checkpointing: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        self._check_numbers()
        self._check_choices()
        self._check_fixed_widths()

    _POSITIVE: ClassVar[tuple[str, ...]] = (
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

    def _check_numbers(self) -> None:
        """Sizes are positive integers, coefficients positive, rates in [0, 1)."""
        for name in self._POSITIVE:
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

    def _check_choices(self) -> None:
        """The action order, the named choices and the flags; the world-vector bound is positive."""
        try:
            object.__setattr__(self, "action_order", check_action_order(self.action_order))
        except ValueError as e:
            raise ConfigError(f"GoogleRT1Config.action_order: {e}") from None
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise ConfigError(
                    f"GoogleRT1Config.{name} must be one of {choices}, got {getattr(self, name)!r}"
                )
        for name in ("image_attends_past_actions", "action_token_embedding"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    f"GoogleRT1Config.{name} must be True or False, got {getattr(self, name)!r}"
                )
        bound = self.world_vector_bound
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not 0 < bound < float("inf"):
            raise ConfigError(f"GoogleRT1Config.world_vector_bound must be a positive number, got {bound!r}")

    def _check_fixed_widths(self) -> None:
        """What Google's network fixes: the rtx input size, the FiLM context, the action tokens, the EfficientNet's
        smallest input; and the run-time flag is a boolean."""
        if self.preprocessing == "rtx" and self.encoder_input_size != RTX_INPUT_SIZE:
            raise ConfigError(
                f"GoogleRT1Config.encoder_input_size={self.encoder_input_size}: preprocessing 'rtx' resizes "
                f"to the release's {RTX_INPUT_SIZE}x{RTX_INPUT_SIZE} (rt1.py L153)"
            )
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
        if self.preprocessing == "rtx":
            return {
                "pixel_scaling": "rtx",
                "formula": f"bilinear resize of the frame to {size}x{size} (half-pixel centres, no antialiasing; "
                "a 300x300 frame passes unchanged), x = pixel / 255, then (x - (0.485, 0.456, 0.406)) / "
                "(0.229, 0.224, 0.225) (the Open X-Embodiment release's RT-1-X)",
            }
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
        """Side of the EfficientNet's last feature map: five halvings of encoder_input_size, floor with
        "tf_asymmetric" padding (300 -> 9), ceil with "same" (300 -> 10)."""
        size = self.encoder_input_size
        for _ in range(5):
            size = size // 2 if self.stride2_padding == "tf_asymmetric" else -(-size // 2)
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
    def rtx(cls, **changes) -> GoogleRT1Config:
        """RT-1-X, the Open X-Embodiment release (rt1_inference_example.py L150-164): 56,896,809 parameters
        and 87,296 BatchNorm statistics; `changes` override fields (e.g. the camera's frame size)."""
        return cls(**{**RTX_FIELDS, **changes})

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


# RT-1-X (rt1_inference_example.py L150-164 with rt1.RT1's defaults, rt1.py L361-380): the same B3 encoder,
# TokenLearner to 81 tokens of a 10x10 map, 8 layers of 8 heads of 256, 15 frames, 512 bins.
RTX_FIELDS = {
    "num_frames": 15,
    "num_learned_tokens": 81,
    "key_dim": 256,
    "num_bins": 512,
    "stride2_padding": "same",
    "feed_forward": "swiglu",
    "image_attends_past_actions": False,
    "action_token_embedding": False,
    "preprocessing": "rtx",
    "episode_start": "zero_frames",
    "action_order": RTX_ACTION_ORDER,
    "world_vector_bound": 2.0,
}
RTX_CONFIG = GoogleRT1Config.rtx()
