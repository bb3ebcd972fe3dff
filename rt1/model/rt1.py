"""RT1: the whole model. MaxViT + TokenLearner per frame, causal transformer over frames, action head.

    frames (B, F, H, W, 3) uint8 pixels (channels-last, as stored and as the camera gives them), text_embeds (B, E)
      pixels:        uint8 -> float as config.pixel_scaling says (`normalize_frames`), inside encode_frames
      condition:     text -> shared MLP stem -> FiLM modulations of every layer (`Conditioning`)
      encode_frames: every frame -> MaxViT (FiLM) [+ position embedding] -> TokenLearner -> tokens (B*F, n, D)
      decode:        tokens (B, F, n, D) -> causal Transformer (FiLM) -> mean over the n tokens
                     -> LayerNorm -> Linear -> logits (B, F, num_actions, num_bins)

forward = condition dropout / guidance + condition + encode_frames + decode. Frames are encoded
independently (eval-mode BatchNorm), and the transformer is causal, so the logits of frame t depend
only on frames 0..t: the policy caches each frame's tokens and encodes only the newest frame.

Classifier-free guidance: in training, each sample's text embedding is replaced by a learned null
embedding with probability cond_drop_prob (default config.cond_drop_prob). At inference,
cond_scale != 1 runs the conditioned and the null-conditioned model in one batch and returns
null + (cond - null) * cond_scale; cond_scale == 1 is the plain conditioned forward.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rt1.config import RT1Config
from rt1.model.chunks import check_chunks, chunk_logits
from rt1.model.film import Conditioning, TextConditioner
from rt1.model.maxvit import MaxViT
from rt1.model.normalize import normalize_frames
from rt1.model.token_learner import TokenLearner
from rt1.model.transformer import Transformer


def guided_logits(logits: Tensor, cond_scale: float) -> Tensor:
    """logits (2B, ...) = [conditioned; null-conditioned] -> null + (cond - null) * cond_scale, (B, ...)."""
    cond, null = logits.chunk(2, dim=0)
    return null + (cond - null) * cond_scale


class RT1(nn.Module):
    supports_guidance = True  # a learned null instruction (classifier-free guidance)

    def __init__(self, config: RT1Config | None = None) -> None:
        super().__init__()
        self.config = config = config if config is not None else RT1Config()
        self.conditioner = TextConditioner(config.text_embed_dim, config.cond_dim)
        self.vit = MaxViT(config)
        if config.feature_position_embedding:
            side = config.feature_map_sizes[-1]
            self.feature_position = nn.Parameter(torch.zeros(side, side, config.embed_dim))
        self.token_learner = TokenLearner(
            config.embed_dim,
            config.num_learned_tokens,
            config.token_learner_ff_mult,
            config.token_learner_pooling,
        )
        self.transformer = Transformer(config)
        self.to_logits = nn.Sequential(
            nn.LayerNorm(config.embed_dim, bias=False),
            nn.Linear(config.embed_dim, config.num_actions * config.num_bins),
        )

    @property
    def null_text_embed(self) -> Tensor:
        """(E,) the learned embedding that stands for "no instruction" (classifier-free guidance)."""
        return self.conditioner.null_text_embed

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def trains_every_parameter(self) -> bool:
        """Without condition dropout the null embedding gets no gradient (DDP must look for unused parameters)."""
        return self.config.cond_drop_prob > 0.0

    def for_inference(self) -> RT1:
        """An eval-only copy with folded BatchNorms (`rt1.model.inference`), what a policy runs."""
        from rt1.model.inference import inference_model

        return inference_model(self)

    # ---- conditioning, encoder, decoder -----------------------------------------------------------

    def condition(self, text_embeds: Tensor) -> Conditioning:
        """text_embeds (N, E) -> every FiLM modulation for those N instructions (no dropout here)."""
        self._check_text(text_embeds)
        cond = self.conditioner(text_embeds)
        return Conditioning(self.vit.modulations(cond), self.transformer.modulations(cond))

    def encode_frames(self, frames: Tensor, text_embeds: Tensor | Conditioning) -> Tensor:
        """frames (N, H, W, 3) uint8, text_embeds (N, E) or its Conditioning -> tokens (N, n, D).

        n = num_learned_tokens, D = embed_dim. Pass `null_text_embed` rows to encode unconditioned. The
        pixels are scaled here, from the model's own config (a float input is refused: already scaled?).
        """
        return self.token_learner(self.feature_map(frames, text_embeds))

    def feature_map(self, frames: Tensor, text_embeds: Tensor | Conditioning) -> Tensor:
        """frames (N, H, W, 3) uint8, text_embeds (N, E) or its Conditioning -> the MaxViT's final map (N, h, w, D),
        with the position embedding when the config has one: what TokenLearner pools."""
        cond = self._conditioning(text_embeds, frames.shape[0])
        # (N, H, W, 3) -> (N, 3, H, W) as a view: NCHW in channels_last memory, what the convolutions take.
        pixels = normalize_frames(frames, self.config.pixel_scaling).permute(0, 3, 1, 2)
        features = self.vit(pixels, cond.encoder)  # (N, h, w, D)
        if self.config.feature_position_embedding:
            features = features + self.feature_position
        return features

    def decode(self, tokens: Tensor, text_embeds: Tensor | Conditioning) -> Tensor:
        """tokens (B, F, n, D), text_embeds (B, E) or its Conditioning -> logits (B, F, num_actions, num_bins).

        F may be 1..num_frames (time positions 0..F-1); frame t's logits depend on frames 0..t only.
        """
        b, f = tokens.shape[:2]
        if f > self.config.num_frames:
            raise ValueError(f"decode got {f} frames, more than num_frames={self.config.num_frames}")
        cond = self._conditioning(text_embeds, b)
        pooled = self.transformer(tokens, cond.transformer).mean(dim=2)  # (B, F, D)
        return self.to_logits(pooled).view(b, f, self.config.num_actions, self.config.num_bins)

    # ---- full forward -----------------------------------------------------------------------------

    def forward(
        self,
        frames: Tensor,
        text_embeds: Tensor,
        cond_drop_prob: float | None = None,
        cond_scale: float = 1.0,
        chunk_windows: Tensor | None = None,
    ) -> Tensor:
        """frames (B, F, H, W, 3) uint8, text_embeds (B, E) -> logits (B, F, num_actions, num_bins).

        chunk_windows (C,) int64 (`rt1.model.chunks`): frames are instead (T, H, W, 3), the frames of C chunks of
        consecutive windows, text_embeds (C, E), and the logits are every window's, (sum(chunk_windows), F, ...);
        each frame is encoded once.
        cond_drop_prob: probability of replacing each sample's (chunk's) text by the null embedding; default
        config.cond_drop_prob in training mode and 0 in eval mode.
        cond_scale: classifier-free guidance scale (eval only); 1 = plain conditioned forward.
        """
        c = self.config
        if chunk_windows is None and (frames.ndim != 5 or frames.shape[-1] != c.channels):
            raise ValueError(f"frames must be (B, F, H, W, {c.channels}), got {tuple(frames.shape)}")
        h, w, channels = frames.shape[-3:]
        if h != c.image_size or w != c.image_size or channels != c.channels:
            raise ValueError(f"frames are {h}x{w}, the model expects {c.image_size}x{c.image_size}")
        if chunk_windows is None:
            self._check_text(text_embeds, frames.shape[0])
        else:
            self._check_text(text_embeds)
            windows = check_chunks(frames, chunk_windows, c.num_frames, text_embeds.shape[0])
        if cond_scale != 1.0:
            if self.training:
                raise ValueError(
                    "cond_scale != 1 (classifier-free guidance) is for eval mode only; call model.eval()"
                )
            frames = torch.cat((frames, frames), dim=0)
            text_embeds = torch.cat((text_embeds, self.null_text_embed.expand_as(text_embeds)), dim=0)
            windows = windows * 2 if chunk_windows is not None else None
        else:
            if cond_drop_prob is None:
                cond_drop_prob = c.cond_drop_prob if self.training else 0.0
            text_embeds = self.conditioner.drop(text_embeds, cond_drop_prob)

        cond = self.condition(text_embeds)  # (B', ...) once per sample (chunk), shared by its frames
        if chunk_windows is not None:
            logits = chunk_logits(self, frames, cond, windows)
        else:
            bb, f = frames.shape[:2]
            tokens = self.encode_frames(frames.flatten(0, 1), cond.repeat_interleave(f))  # (B'*F, n, D)
            logits = self.decode(tokens.view(bb, f, *tokens.shape[1:]), cond)
        return guided_logits(logits, cond_scale) if cond_scale != 1.0 else logits

    # ---- checks -----------------------------------------------------------------------------------

    def _conditioning(self, text_embeds: Tensor | Conditioning, batch: int) -> Conditioning:
        cond = text_embeds if isinstance(text_embeds, Conditioning) else self.condition(text_embeds)
        if cond.batch != batch:
            raise ValueError(f"got conditioning for {cond.batch} rows, expected {batch}")
        return cond

    def _check_text(self, text_embeds: Tensor, batch: int | None = None) -> None:
        e = self.config.text_embed_dim
        if (
            text_embeds.ndim != 2
            or text_embeds.shape[1] != e
            or (batch is not None and text_embeds.shape[0] != batch)
        ):
            raise ValueError(
                f"text_embeds must be ({batch if batch is not None else 'N'}, {e}), "
                f"got {tuple(text_embeds.shape)}"
            )
