"""`build_model(config)`: the network of a model config's family (`rt1.model_families`), freshly initialised.

Every family's model offers the interface its callers use (the trainer, RT1Policy, export, evaluation):

    forward(frames (B, F, H, W, 3) uint8, text_embeds (B, E)) -> logits (B, F, num_actions, num_bins)
    condition(text_embeds (N, E)) -> Conditioning      every FiLM modulation of N instructions
    encode_frames(frames (N, H, W, 3), text or Conditioning) -> tokens (N, n, D)   one frame at a time
    decode(tokens (B, F, n, D), text or Conditioning) -> logits (B, F, num_actions, num_bins), causal in F
    supports_guidance            whether classifier-free guidance (a null instruction) exists
    trains_every_parameter       False when some parameters get no gradient (DDP must look for them)
    for_inference()              the module a policy runs (BatchNorms folded where the family does that)
    config.frame_size            (H, W) of the frames it takes
"""

from __future__ import annotations

import importlib

from torch import nn

from rt1.model_families import MODEL_FAMILIES, ModelConfig

MODEL_CLASSES = {"maxvit": ("rt1.model.rt1", "RT1"), "google_rt1": ("rt1.model.google.network", "GoogleRT1")}
assert set(MODEL_CLASSES) == set(MODEL_FAMILIES)


def build_model(config: ModelConfig) -> nn.Module:
    """A new model of `config`'s family (imported on first use)."""
    module, name = MODEL_CLASSES[config.model_type]
    return getattr(importlib.import_module(module), name)(config)
