"""GoogleRT1: Google's RT-1 network (google-research/robotics_transformer at commit 4569641) in PyTorch.

    frames (B, F, H, W, 3) uint8 at the camera's size (256 x 320), text_embeds (B, 512)
      condition:     text -> the (mult, add) of all 27 FiLM layers (`Conditioning.encoder`), once per instruction
      encode_frames: frame -> `preprocess` -> FiLM-EfficientNet -> (N, 512, 9, 9) -> TokenLearner -> (N, 8, 512)
      decode:        tokens (B, F, 8, 512) -> decoder over image tokens and zeroed action slots
                     -> logits (B, F, 11, num_bins)

`preprocess` is Google's image preprocessing (film_efficientnet/preprocessors.py and
pretrained_efficientnet_encoder.py L84-95): uint8 -> [0, 1] -> bilinear resize (half-pixel centres, no
antialiasing) to encoder_input_size x encoder_input_size, then the encoder's Normalization, whose mean and
variance are weights. Google's training-time random shift (pad 20 rows and 50 columns, crop back at a random
offset, preprocessors.py L58-88) is the data loader's augmentation here (`rt1.data.dataset.shifted_frames`,
one offset per window; Google draws one per batch); with the same offset the two are the same function.

Frames are encoded independently (BatchNorm in eval mode) and the decoder is causal over frames, so the
policy caches each frame's tokens, as Google's step-by-step policy caches `context_image_tokens`.
This network has no classifier-free guidance (no null instruction): `supports_guidance` is False.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rt1.actions import ACTION_KEYS, token_index
from rt1.google_config import IMAGE_TOKEN_WIDTH, GoogleRT1Config
from rt1.model.chunks import check_chunks, chunk_logits
from rt1.model.film import Conditioning
from rt1.model.google.efficientnet import FiLMEfficientNet
from rt1.model.google.transformer import Decoder

# ---- helpers ---------------------------------------------------------------------------------------


def preprocess(frames: Tensor, size: int, resize_first: bool = False) -> Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, size, size) in [0, 1], channels_last memory (a free permute).

    Google's encoder scales to [0, 1] and then resizes; RT-1-X's policy (resize_first) resizes the frame and
    then divides by 255 (rt1_inference_example.py L130-131): the same values up to float rounding."""
    if frames.is_floating_point():
        raise TypeError(f"expected uint8 frames, got {frames.dtype} (already scaled?)")
    pixels = frames.permute(0, 3, 1, 2).float()
    if not resize_first:
        pixels = pixels / 255.0
    if tuple(pixels.shape[2:]) != (
        size,
        size,
    ):  # the same size: bilinear with half-pixel centres is the identity
        pixels = F.interpolate(
            pixels, size=(size, size), mode="bilinear", align_corners=False, antialias=False
        )
    return pixels / 255.0 if resize_first else pixels


# ---- leaf modules ----------------------------------------------------------------------------------


class TokenLearner(nn.Module):
    """Google's TokenLearnerModule (tokenizers/token_learner.py L113-128): (N, S, D) -> (N, num_tokens, D).

    LayerNorm (eps 1e-6) -> Dense(bottleneck, tanh-approximated GELU) -> Dense(num_tokens) -> softmax over
    the S positions -> weighted sum of the un-normalised inputs.
    """

    def __init__(self, dim: int, num_tokens: int, bottleneck: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.hidden = nn.Linear(dim, bottleneck)
        self.output = nn.Linear(bottleneck, num_tokens)

    def forward(self, x: Tensor) -> Tensor:
        weights = self.output(F.gelu(self.hidden(self.norm(x)), approximate="tanh"))  # (N, S, num_tokens)
        return torch.bmm(weights.transpose(1, 2).softmax(dim=-1), x)


# ---- the network -----------------------------------------------------------------------------------


class GoogleRT1(nn.Module):
    supports_guidance = False

    def __init__(self, config: GoogleRT1Config | None = None) -> None:
        super().__init__()
        self.config = c = config if config is not None else GoogleRT1Config()
        self.encoder = FiLMEfficientNet(c)
        self.token_learner = TokenLearner(IMAGE_TOKEN_WIDTH, c.num_learned_tokens, c.token_learner_bottleneck)
        self.decoder = Decoder(c)
        # Google's _action_token_emb: in the checkpoint, no effect on the output (its output is zeroed);
        # RT-1-X has none (config.action_token_embedding=False)
        if c.action_token_embedding:
            self.action_token_embedding = nn.Linear(c.num_bins, IMAGE_TOKEN_WIDTH)
        # the decoder's slots in rt1.actions' order (config.action_order: which key each slot predicts)
        index = None if c.action_order == ACTION_KEYS else torch.tensor(token_index(c.action_order))
        self.register_buffer("token_index", index, persistent=False)

    @property
    def trains_every_parameter(self) -> bool:
        """False when action_token_embedding exists: it never gets a gradient (DDP must look for unused
        parameters). RT-1-X has none."""
        return not self.config.action_token_embedding

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def for_inference(self) -> GoogleRT1:
        """An eval-only copy with every BatchNorm folded into its convolution (what a policy runs): the same
        logits up to float rounding. A snapshot of the weights: make a new one after they change."""
        fast = copy.deepcopy(self).eval()
        fast.encoder.fold_batch_norms()

        def no_training(mode: bool = True):
            if mode:
                raise RuntimeError(
                    "a for_inference() model cannot train: train the original and fold it again"
                )
            return nn.Module.train(fast, False)

        fast.train = no_training
        return fast

    # ---- conditioning, encoder, decoder -----------------------------------------------------------

    def condition(self, text_embeds: Tensor) -> Conditioning:
        """text_embeds (N, 512) -> the modulations of every FiLM layer for those N instructions."""
        self._check_text(text_embeds)
        return Conditioning(tuple(layer(text_embeds) for layer in self.encoder.films), ())

    def encode_frames(self, frames: Tensor, text_embeds: Tensor | Conditioning) -> Tensor:
        """frames (N, H, W, 3) uint8, text_embeds (N, 512) or its Conditioning -> tokens (N, n, 512)."""
        cond = text_embeds if isinstance(text_embeds, Conditioning) else self.condition(text_embeds)
        if cond.batch != frames.shape[0]:
            raise ValueError(f"got conditioning for {cond.batch} rows, expected {frames.shape[0]}")
        c = self.config
        pixels = preprocess(frames, c.encoder_input_size, c.preprocessing == "rtx")
        pixels = pixels.to(self.encoder.normalization.mean.dtype)
        if self.training and pixels.device.type == "cpu":
            pixels = pixels.contiguous()  # exact batch statistics on the CPU (efficientnet.BatchNorm)
        features = self.encoder(pixels, cond.encoder)  # (N, 512, s, s)
        return self.token_learner(features.flatten(2).transpose(1, 2))

    def decode(self, tokens: Tensor, text_embeds: Tensor | Conditioning | None = None) -> Tensor:
        """tokens (B, F, n, 512) -> logits (B, F, num_actions, num_bins); F <= num_frames.

        The decoder is not conditioned on the instruction (the image tokens are): text_embeds is accepted
        for the common interface and not used. The logits are in rt1.actions' token order whatever the
        network's slot order (config.action_order).
        """
        if tokens.shape[1] > self.config.num_frames:
            raise ValueError(
                f"decode got {tokens.shape[1]} frames, more than num_frames={self.config.num_frames}"
            )
        logits = self.decoder(tokens)
        return logits if self.token_index is None else logits.index_select(2, self.token_index)

    def forward(
        self,
        frames: Tensor,
        text_embeds: Tensor,
        cond_drop_prob: float | None = None,
        cond_scale: float = 1.0,
        chunk_windows: Tensor | None = None,
    ) -> Tensor:
        """frames (B, F, H, W, 3) uint8, text_embeds (B, 512) -> logits (B, F, num_actions, num_bins).

        chunk_windows (C,) int64 (`rt1.model.chunks`): frames are instead (T, H, W, 3), the frames of C chunks of
        consecutive windows, text_embeds (C, 512), and the logits are every window's, (sum(chunk_windows), F, ...);
        each frame is encoded once.
        """
        if cond_scale != 1.0 or cond_drop_prob:
            raise ValueError(
                "Google's RT-1 has no classifier-free guidance: cond_scale must be 1, no cond_drop_prob"
            )
        c = self.config
        if frames.ndim != (5 if chunk_windows is None else 4) or tuple(frames.shape[-3:]) != (
            *c.frame_size,
            3,
        ):
            layout = "B, F" if chunk_windows is None else "T"
            raise ValueError(
                f"frames must be ({layout}, {c.image_height}, {c.image_width}, 3), got {tuple(frames.shape)}"
            )
        if chunk_windows is not None:
            self._check_text(text_embeds)
            windows = check_chunks(frames, chunk_windows, c.num_frames, text_embeds.shape[0])
            return chunk_logits(self, frames, self.condition(text_embeds), windows)
        b, f = frames.shape[:2]
        self._check_text(text_embeds, b)
        cond = self.condition(text_embeds).repeat_interleave(f)
        tokens = self.encode_frames(frames.flatten(0, 1), cond)
        return self.decode(tokens.view(b, f, *tokens.shape[1:]))

    def _check_text(self, text_embeds: Tensor, batch: int | None = None) -> None:
        e = self.config.text_embed_dim
        if text_embeds.ndim != 2 or text_embeds.shape[1] != e or batch not in (None, text_embeds.shape[0]):
            raise ValueError(f"text_embeds must be ({batch or 'N'}, {e}), got {tuple(text_embeds.shape)}")
