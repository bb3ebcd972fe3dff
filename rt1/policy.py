"""RT1Policy: closed-loop inference with a per-episode cache of learned frame tokens.

    policy = RT1Policy(model, cond_scale=1.0)        # or RT1Policy.from_path(checkpoint file or exported dir)
    policy.reset()                                   # at the start of every episode
    action = policy.step(image, text_embed)          # image uint8 (H, W, 3) at the model's size
    action, tokens = policy.step(image, text_embed, return_tokens=True)

History rule (the same windows the model is trained on). Training windows are 6 consecutive steps
of one episode, frame positions 0..5. At step t of an episode:

    t < 5:   the transformer runs over the t + 1 frames seen so far at positions 0..t and the action
             is read from the last frame. The transformer is causal, so this equals the logits of
             frame t in the 6-frame training window that starts at the episode's first step.
    t >= 5:  the transformer runs over the last 6 frames at positions 0..5 and the action is read
             from the last frame (the window that ends at step t).

A model whose config has `episode_start="zero_frames"` (RT-1-X) always runs full windows instead: the
window before the episode's first frame is filled with the tokens of an all-zero frame under a zero
instruction embedding, the zero steps the Open X-Embodiment release pads every training episode with, so
the release's RT1Policy (which is given 15 frames) and this one see the same windows at every step.
Actions are detokenized with the model's own bins and bounds (`rt1.actions.ActionTokenizer.of(config)`:
RT-1-X's 512 bins and world_vector in [-2, 2]); the logits are in rt1.actions' token order whatever the
network's slot order (GoogleRT1Config.action_order), so the policy never re-orders.

Each frame's TokenLearner tokens depend on that frame (and the instruction) only, so the policy
keeps the tokens of the last 6 frames and encodes only the new frame each step
(`use_cache=False` re-encodes all of them, the same result at ~6x the cost). The FiLM modulations
depend on the instruction only: they are computed at the episode's first step and reused.

Inference-only speed-ups (same actions, tests/model/test_policy.py): the policy runs the model's
`for_inference()` form (the MaxViT: a copy with every MBConv BatchNorm folded into the layer before it,
`rt1.model.inference`, sharing the other weights; `fold_batch_norms=False` runs the model as it is), under
torch.inference_mode. Any model family works (`rt1.model.build_model`); Google's step-by-step policy
caches per-frame image tokens the same way (its `context_image_tokens`).

With cond_scale != 1 the policy keeps a second cache of null-conditioned tokens and returns
classifier-free-guided actions (null + (cond - null) * cond_scale).

`predict_episode` gives the same per-step tokens for a whole recorded episode in a few batched
passes (for plots and offline evaluation).
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch
from torch import Tensor, nn

from rt1.actions import ActionTokenizer
from rt1.errors import RT1Error
from rt1.model import Conditioning, guided_logits


class InferenceSettingError(RT1Error, ValueError):
    """A bad --device or --jpeg-quality of an inference command; the message names the option."""


def check_device(device: str) -> torch.device:
    """A torch.device for --device, or a one-line error (unknown name, CUDA not available)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise InferenceSettingError(f"--device {device!r} is not a device: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InferenceSettingError(
                f"--device {device}: CUDA is not available on this machine; use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InferenceSettingError(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type != "cpu":
        raise InferenceSettingError(f"--device {device!r}: use cpu or cuda")
    return dev


def model_jpeg_quality(path, override: int | None = None) -> int | None:
    """The JPEG quality of the frames the model at `path` was trained on, the one preprocessing of every
    consumer: `override` (--jpeg-quality, 1..100) if given, else an export's config.json value (null: the frames
    were the dataset's JPEG, not re-encoded, as stage 2's --image-size native and Google's data keep them),
    else stage 2's default (a checkpoint does not record it)."""
    from pathlib import Path

    from rt1.data.images import JPEG_QUALITY

    if override is not None:
        if not isinstance(override, int) or isinstance(override, bool) or not 1 <= override <= 100:
            raise InferenceSettingError(f"--jpeg-quality must be 1..100, got {override!r}")
        return override
    if Path(path).is_dir():
        from rt1.model.pretrained import read_pretrained_config

        return read_pretrained_config(path)["image_preprocessing"]["jpeg_quality"]
    return JPEG_QUALITY


class RT1Policy:
    def __init__(
        self,
        model: nn.Module,
        cond_scale: float = 1.0,
        device: torch.device | str | None = None,
        use_cache: bool = True,
        fold_batch_norms: bool = True,
    ) -> None:
        if device is None:
            device = next(model.parameters()).device
        self.device = torch.device(device)
        model = model.to(self.device).eval()
        if cond_scale != 1.0 and not model.supports_guidance:
            raise ValueError(f"cond_scale={cond_scale}: this model has no classifier-free guidance (use 1)")
        # The family's inference form (MaxViT: BatchNorms folded into the layers before them, the same
        # actions with less work). A snapshot of the weights: build a new policy after changing them.
        self.model = model.for_inference() if fold_batch_norms else model
        self.config = model.config
        self.tokenizer = ActionTokenizer.of(self.config)
        self._zero_frames = getattr(self.config, "episode_start", "prefix") == "zero_frames"
        self._zero_tokens: Tensor | None = None  # (1, n, D): an all-zero frame under a zero instruction
        self.cond_scale = float(cond_scale)
        self.use_cache = use_cache
        self.last_tokens: np.ndarray | None = None  # (num_actions,) int64, the last step's tokens
        self.last_logits: Tensor | None = None  # (num_actions, num_bins), the last step's logits
        self.reset()

    @classmethod
    def from_path(
        cls, path, cond_scale: float = 1.0, device: torch.device | str = "cpu", **kwargs
    ) -> RT1Policy:
        """A policy of a checkpoint file or a directory of `python -m rt1.export` (`rt1.model.load_model`)."""
        from rt1.model import load_model

        return cls(load_model(path, device)[0], cond_scale=cond_scale, device=device, **kwargs)

    @property
    def guided(self) -> bool:
        return self.cond_scale != 1.0

    def reset(self) -> None:
        """Forget the episode: call between episodes (and if the instruction changes)."""
        self._history: deque[Tensor] = deque(maxlen=self.config.num_frames)  # tokens or frames, (k, ...)
        self._text: Tensor | None = None
        self._cond: Conditioning | None = None
        self.t = 0
        self.last_tokens = None
        self.last_logits = None

    # ---- input conversion -------------------------------------------------------------------------

    def _frames(self, images) -> Tensor:
        """uint8 (..., H, W, 3) numpy/tensor -> uint8 (N, H, W, 3) on the device (the model scales the pixels)."""
        x = torch.as_tensor(np.asarray(images) if not isinstance(images, Tensor) else images)
        if x.dtype != torch.uint8:
            raise TypeError(f"images must be uint8 (H, W, 3), got dtype {x.dtype}")
        x = x.reshape(-1, *x.shape[-3:])
        height, width = self.config.frame_size
        if tuple(x.shape[1:]) != (height, width, 3):
            raise ValueError(
                f"images must be ({height}, {width}, 3) uint8 (resize before the policy), "
                f"got {tuple(x.shape[1:])}"
            )
        return x.to(self.device)

    def _texts(self, text_embed) -> Tensor:
        """(E,) -> (k, E): the instruction, plus the null embedding when guiding."""
        e = torch.as_tensor(np.asarray(text_embed) if not isinstance(text_embed, Tensor) else text_embed)
        e = e.to(self.device, torch.float32).reshape(1, -1)
        if e.shape[1] != self.config.text_embed_dim:
            raise ValueError(f"text_embed must have {self.config.text_embed_dim} values, got {e.shape[1]}")
        if self.guided:
            e = torch.cat((e, self.model.null_text_embed.detach()[None].to(e.dtype)), dim=0)
        return e

    def _padded(self, tokens: Tensor) -> Tensor:
        """(k, t, n, D) -> (k, num_frames - 1 + t, n, D): with episode_start "zero_frames", the tokens of
        num_frames - 1 zero steps before the first frame (unchanged otherwise)."""
        missing = self.config.num_frames - 1
        if not self._zero_frames:
            return tokens
        if self._zero_tokens is None:
            frame = torch.zeros((1, *self.config.frame_size, 3), dtype=torch.uint8, device=self.device)
            text = torch.zeros((1, self.config.text_embed_dim), device=self.device)
            self._zero_tokens = self.model.encode_frames(frame, text)
        pad = self._zero_tokens[:, None].expand(tokens.shape[0], missing, *tokens.shape[2:])
        return torch.cat((pad.to(tokens.dtype), tokens), dim=1)

    def _action_logits(self, logits: Tensor) -> Tensor:
        """(k, ..., num_actions, num_bins) -> (..., num_actions, num_bins), guided if cond_scale != 1."""
        return guided_logits(logits, self.cond_scale)[0] if self.guided else logits[0]

    # ---- closed loop ------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self, image, text_embed, return_tokens: bool = False):
        """image uint8 (H, W, 3), text_embed (E,) -> RLDS action dict (numpy), and tokens (11,) if asked."""
        text = self._texts(text_embed)
        if self._text is None:
            self._text, self._cond = text, self.model.condition(text)
        elif not torch.equal(text, self._text):
            raise ValueError("the instruction embedding changed within an episode; call reset() first")
        cond = self._cond
        frame = self._frames(image)  # (1, H, W, 3)
        k = text.shape[0]
        if self.use_cache:
            self._history.append(self.model.encode_frames(frame.expand(k, -1, -1, -1), cond))  # (k, n, D)
            tokens = torch.stack(tuple(self._history), dim=1)  # (k, t', n, D)
        else:
            self._history.append(frame)
            frames = torch.cat(tuple(self._history), dim=0)  # (t', H, W, 3)
            f = frames.shape[0]
            encoded = self.model.encode_frames(frames.repeat(k, 1, 1, 1), cond.repeat_interleave(f))
            tokens = encoded.view(k, f, *encoded.shape[1:])
        tokens = self._padded(tokens)[:, -self.config.num_frames :]  # the window (zero steps at the start)
        logits = self._action_logits(self.model.decode(tokens, cond)[:, -1])  # (num_actions, num_bins)
        self.t += 1
        self.last_logits = logits
        self.last_tokens = logits.argmax(dim=-1).cpu().numpy()
        action = self.tokenizer.detokenize(self.last_tokens)
        return (action, self.last_tokens) if return_tokens else action

    # ---- whole episodes ---------------------------------------------------------------------------

    @torch.inference_mode()
    def predict_episode(self, images, text_embed, batch_size: int = 32, return_logits: bool = False):
        """images uint8 (T, H, W, 3) of one episode -> predicted tokens (T, num_actions) int64 numpy.

        Step t gets exactly the tokens `step` would give at step t after a `reset()`. The whole
        episode is encoded once; the transformer then runs once per window (T - 5 windows).
        With return_logits=True also returns the logits (T, num_actions, num_bins) tensor.
        """
        frames = self._frames(images)  # (T, H, W, 3)
        text = self._texts(text_embed)  # (k, E)
        cond = self.model.condition(text)
        k, steps, f = text.shape[0], frames.shape[0], self.config.num_frames
        encoded = [
            self.model.encode_frames(chunk.repeat(k, 1, 1, 1), cond.repeat_interleave(len(chunk)))
            for chunk in frames.split(batch_size)
        ]  # (k * chunk, n, D) each, instruction-major
        tokens = torch.cat([e.view(k, -1, *e.shape[1:]) for e in encoded], dim=1)  # (k, T, n, D)
        tokens = self._padded(tokens)  # zero_frames: every step's window is full, f - 1 zero steps first
        if steps <= f and not self._zero_frames:  # one window from the start: frame t's logits are step t's
            logits = self._action_logits(self.model.decode(tokens, cond))  # (T, A, bins)
        else:
            starts = torch.arange(tokens.shape[1] - f + 1, device=self.device)
            index = starts[:, None] + torch.arange(f, device=self.device)  # (W, f)
            window_logits = []
            for i in range(0, len(starts), batch_size):
                idx = index[i : i + batch_size]
                windows = tokens[:, idx].flatten(0, 1)  # (k * w, f, n, D)
                out = self.model.decode(windows, cond.repeat_interleave(len(idx)))
                window_logits.append(out.view(k, len(idx), *out.shape[1:]))
            window_logits = torch.cat(window_logits, dim=1)  # (k, W, f, A, bins)
            # the first window gives steps 0..f-1; window s >= 1 (ending at step s + f - 1) its last frame
            all_logits = torch.cat((window_logits[:, 0], window_logits[:, 1:, -1]), dim=1)  # (k, T, A, bins)
            if self._zero_frames:  # window s ends at step s
                all_logits = window_logits[:, :, -1]
            logits = self._action_logits(all_logits)
        predicted = logits.argmax(dim=-1).cpu().numpy()
        return (predicted, logits) if return_logits else predicted
