"""The RT-1 model: modules, loss, and loading a trained checkpoint. See rt1/model/rt1.py for the data flow.

`load_model` takes a checkpoint file or a directory of `python -m rt1.export` (`load_pretrained`).
The model takes tensors and returns tensors; `build_model(config)` builds the network of a config's family
(`rt1.model_families`: the MaxViT `RT1`, Google's `rt1.model.google.GoogleRT1`).
"""

from rt1.config import LOSS_REDUCTIONS, RT1Config
from rt1.model.factory import build_model
from rt1.model.film import Conditioning
from rt1.model.load import CheckpointError, check_model_path, load_model, read_checkpoint
from rt1.model.loss import action_loss, token_accuracy, token_correct_counts
from rt1.model.normalize import IMAGENET_MEAN, IMAGENET_STD, normalize_frames
from rt1.model.pretrained import PretrainedError, load_pretrained
from rt1.model.rt1 import RT1, guided_logits

__all__ = [
    "RT1Config",
    "RT1",
    "build_model",
    "Conditioning",
    "guided_logits",
    "normalize_frames",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "action_loss",
    "LOSS_REDUCTIONS",
    "token_accuracy",
    "token_correct_counts",
    "CheckpointError",
    "load_model",
    "read_checkpoint",
    "check_model_path",
    "PretrainedError",
    "load_pretrained",
]
