"""The RT-1 model: config, modules, loss. See rt1/model/rt1.py for the data flow."""

from rt1.model.config import PRESETS, RT1Config
from rt1.model.film import Conditioning
from rt1.model.loss import LOSS_REDUCTIONS, action_loss, token_accuracy, token_correct_counts
from rt1.model.normalize import IMAGENET_MEAN, IMAGENET_STD, normalize_video
from rt1.model.rt1 import RT1, guided_logits

__all__ = [
    "PRESETS", "RT1Config", "RT1", "Conditioning", "guided_logits", "normalize_video", "IMAGENET_MEAN",
    "IMAGENET_STD", "action_loss", "LOSS_REDUCTIONS", "token_accuracy", "token_correct_counts",
]
