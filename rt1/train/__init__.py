"""Distributed training of RT-1 (`train_ddp.py`): config, processes, loop, checkpoints.

    from rt1.train import TrainConfig, train
    result = train(TrainConfig.for_preset("tiny", data_dir=..., train_index=..., val_index=...))

    from rt1.train import load_model_from_checkpoint
    model, model_config, train_args = load_model_from_checkpoint("save/rt1_ddp/checkpoint-3.pt", "cpu")

See rt1/train/trainer.py (the loop), distributed.py (process group, devices, collectives),
checkpoint.py (format and keys), data.py (samplers, loaders), runlog.py (metrics.jsonl, TensorBoard),
cli.py (the command line of train_ddp.py).
"""

from rt1.train.checkpoint import (
    CheckpointError, checkpoint_path, latest_checkpoint, list_checkpoints, load_checkpoint, load_model_from_checkpoint,
)
from rt1.train.config import PRESET_DEFAULTS, TrainConfig
from rt1.train.runlog import METRICS_FILE, read_metrics
from rt1.train.trainer import NonFiniteLossError, ResumeError, TrainResult, TrainSetupError, train

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NON_FINITE_LOSS = 3

__all__ = [
    "TrainConfig", "PRESET_DEFAULTS", "train", "TrainResult", "NonFiniteLossError", "ResumeError", "TrainSetupError",
    "CheckpointError", "load_model_from_checkpoint", "load_checkpoint", "latest_checkpoint", "list_checkpoints",
    "checkpoint_path", "read_metrics", "METRICS_FILE", "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_NON_FINITE_LOSS",
]
