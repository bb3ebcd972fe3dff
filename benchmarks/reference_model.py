"""robotic-transformer-pytorch 0.2.3 (the original pipeline's model) built offline, for the benchmarks only.

Never a dependency of `rt1`. Install it into a separate virtual environment (its own dependencies would
pull a CUDA torch, open_clip and a T5 download), then run the benchmark with that environment's python:

    python -m venv /path/ref-venv
    /path/ref-venv/bin/pip install torch==2.13.0 numpy einops --index-url https://download.pytorch.org/whl/cpu \\
        --extra-index-url https://pypi.org/simple
    /path/ref-venv/bin/pip install --no-deps robotic-transformer-pytorch==0.2.3 \\
        classifier-free-guidance-pytorch==0.7.1 beartype
    /path/ref-venv/bin/python benchmarks/bench_model.py

classifier_free_guidance_pytorch imports `environs`, `open_clip`, `transformers` and `packaging` at import
time for its text encoders; none is used with precomputed text embeddings, so each missing one is
replaced by a stub module. A text-free adapter registered in its CONDITION_CONFIG as "precomputed" gives
the conditioner the embedding width (T5-base's 768 in the original run) without any text model; call
the model with `text_embeds=`.
"""

from __future__ import annotations

import importlib.util
import sys
import types

from torch import nn

INSTALL = (
    "pip install --no-deps robotic-transformer-pytorch==0.2.3 classifier-free-guidance-pytorch==0.7.1 "
    "beartype (plus torch, numpy, einops), in a separate venv; see benchmarks/reference_model.py"
)
PRECOMPUTED = "precomputed"


def available() -> tuple[bool, str]:
    """(True, "") when robotic_transformer_pytorch can be built here, else (False, why)."""
    missing = [
        m
        for m in ("robotic_transformer_pytorch", "classifier_free_guidance_pytorch", "einops", "beartype")
        if importlib.util.find_spec(m) is None
    ]
    if missing:
        return False, f"not installed: {', '.join(missing)}"
    try:
        import_reference()
    except Exception as error:  # an incompatible version: report it, keep benchmarking ours
        return False, f"could not be imported: {error!r}"
    return True, ""


def _stub_missing_modules() -> None:
    for name in ("environs", "open_clip", "transformers", "packaging"):
        if name in sys.modules or importlib.util.find_spec(name) is not None:
            continue
        module = types.ModuleType(name)
        if name == "environs":

            class Env:
                def read_env(self, *args, **kwargs):
                    pass

                def bool(self, key, default=False):
                    return default

            module.Env = Env
        elif name == "transformers":

            class _NoHub:
                @classmethod
                def from_pretrained(cls, *args, **kwargs):
                    raise RuntimeError("benchmark stub: no text model, no hub")

            for attr in (
                "T5Tokenizer",
                "T5EncoderModel",
                "T5Config",
                "AutoTokenizer",
                "AutoModel",
                "AutoConfig",
            ):
                setattr(module, attr, _NoHub)
            module.logging = types.SimpleNamespace(set_verbosity_error=lambda: None)
        elif name == "open_clip":

            def _no_clip(*args, **kwargs):
                raise RuntimeError("benchmark stub: no CLIP model")

            module.create_model_and_transforms = _no_clip
            module.get_tokenizer = _no_clip
        elif name == "packaging":

            def _parse(v):
                return tuple(int(p) for p in v.split("+")[0].split(".")[:3] if p.isdigit())

            module.version = types.SimpleNamespace(parse=_parse)
        sys.modules[name] = module


class PrecomputedTextEmbeds:
    """Text-model adapter without a model: the conditioner takes `text_embeds` of width `name`."""

    max_text_len = 1

    def __init__(self, name=None, text_embed_pad_value=0.0):
        self.name = name
        self.dim_latent = int(name)
        self.text_embed_pad_value = text_embed_pad_value

    def embed_text(self, texts, **kwargs):
        raise RuntimeError("no text model: call the model with text_embeds=")


def import_reference():
    _stub_missing_modules()
    import classifier_free_guidance_pytorch.classifier_free_guidance_pytorch as cfg
    import robotic_transformer_pytorch as rtp

    cfg.CONDITION_CONFIG[PRECOMPUTED] = PrecomputedTextEmbeds  # MODEL_TYPES is a live keys() view
    return rtp


def build_reference(config, text_embed_dim: int | None = None) -> nn.Module:
    """robotic_transformer_pytorch.RT1 at an RT1Config's sizes, as the original train_ddp.py builds it.

    The reference hard-codes cond_dim = 2 x text width, FiLM and feed-forward multipliers 4 and no
    transformer dropout: the `original` and `rt1` presets satisfy these, `tiny` does not.
    """
    rtp = import_reference()
    c = config
    vit = rtp.MaxViT(
        num_classes=1000,
        dim=c.dim,
        depth=tuple(c.depth),
        dim_head=c.dim_head,
        dim_conv_stem=c.conv_stem_dim,
        window_size=c.attention_window,
        mbconv_expansion_rate=c.mbconv_expansion,
        mbconv_shrinkage_rate=c.mbconv_shrinkage,
        dropout=c.dropout,
        channels=c.channels,
    )
    return rtp.RT1(
        vit=vit,
        num_actions=c.num_actions,
        action_bins=c.num_bins,
        depth=c.transformer_depth,
        heads=c.transformer_heads,
        dim_head=c.transformer_dim_head,
        token_learner_ff_mult=c.token_learner_ff_mult,
        token_learner_num_output_tokens=c.num_learned_tokens,
        cond_drop_prob=c.cond_drop_prob,
        conditioner_kwargs=dict(model_types=PRECOMPUTED, model_names=text_embed_dim or c.text_embed_dim),
    )


def perturb(model: nn.Module, generator) -> None:
    """Move every parameter away from its initial value (zero-initialised FiLM outputs, unit gains, ...)
    so an equivalence check sees every weight; BatchNorm running statistics made non-trivial too."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            owner = model.get_submodule(name.rsplit(".", 1)[0])
            if "conditioners" in name and name.endswith("net.2.weight"):
                p.copy_(noise * 0.05)
            elif "conditioners" in name and name.endswith("net.2.bias"):
                p.copy_(noise * 0.1)
            elif name.endswith(".gamma"):
                p.copy_(1.0 + 0.1 * noise)
            elif p.ndim == 1 and isinstance(owner, nn.BatchNorm2d):
                p.copy_((1.0 + 0.1 * noise) if name.endswith("weight") else 0.1 * noise)
            else:
                p.add_(noise * 0.1 * p.detach().std().clamp(min=1e-3) if p.numel() > 1 else noise * 0.1)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.5, generator=generator)
                m.running_var.uniform_(0.5, 2.0, generator=generator)
