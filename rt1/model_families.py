"""The model families and their configurations: which network a config dict or a preset builds.

    maxvit      RT1Config: the original pipeline's network (robotic-transformer-pytorch's MaxViT RT-1);
                presets `original`, `tiny`, `demo`
    google_rt1  GoogleRT1Config: Google's RT-1 (FiLM-EfficientNet-B3 + TokenLearner + decoder); preset `rt1`

Every config class has a `model_type` tag; `to_dict()` writes it for every family but the MaxViT one, so a
dict without a tag (every checkpoint and export written before there were two families) is the MaxViT's.
`rt1.model.build_model(config)` builds the network of a config. Torch-free.
"""

from __future__ import annotations

import dataclasses

from rt1.google_config import GoogleRT1Config
from rt1.model_config import RUNTIME_ONLY_FIELDS, ConfigError, RT1Config

ModelConfig = RT1Config | GoogleRT1Config
MODEL_FAMILIES: dict[str, type[RT1Config] | type[GoogleRT1Config]] = {
    RT1Config.model_type: RT1Config,
    GoogleRT1Config.model_type: GoogleRT1Config,
}
FAMILY_NAMES = {
    RT1Config.model_type: "the original's MaxViT RT-1",
    GoogleRT1Config.model_type: "Google's RT-1",
}
ARCHITECTURES = {
    RT1Config.model_type: "MaxViT + TokenLearner + causal Transformer, FiLM-conditioned",
    GoogleRT1Config.model_type: "Google's FiLM-EfficientNet + TokenLearner + decoder over image and action tokens",
}
# Not overridable per run: the action head is the tokenizer's, condition dropout has its own option.
_FIXED_FIELDS = ("cond_drop_prob", "num_actions", "num_bins", *RUNTIME_ONLY_FIELDS)


def model_config_from_dict(values: dict) -> ModelConfig:
    """The config of a checkpoint's or export's `model_config` dict (no `model_type`: MaxViT)."""
    tag = values.get("model_type", RT1Config.model_type)
    if tag not in MODEL_FAMILIES:
        raise ConfigError(f"unknown model_type {tag!r}; known: {sorted(MODEL_FAMILIES)}")
    if tag == RT1Config.model_type:
        values = {k: v for k, v in values.items() if k != "model_type"}
    return MODEL_FAMILIES[tag].from_dict(values)


def overridable_fields(config_class: type) -> tuple[str, ...]:
    """The fields of a family a run may override (`--model.FIELD`)."""
    return tuple(f.name for f in dataclasses.fields(config_class) if f.name not in _FIXED_FIELDS)


def family_name(config: ModelConfig) -> str:
    return FAMILY_NAMES[config.model_type]


def architecture(model_type: str) -> str:
    """One line on a family's network (model cards, logs)."""
    return ARCHITECTURES[model_type]
