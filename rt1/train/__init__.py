"""Distributed training of RT-1 (`train_ddp.py`). Import what you need from the modules:

    from rt1.config import TrainConfig
    from rt1.train.trainer import train
    result = train(TrainConfig(preset="tiny", data_dir=..., train_index=..., val_index=...))

trainer.py (the loop), step.py (`train_step` and `evaluate`: one optimizer step, one evaluation pass),
optim.py (optimizer and the learning-rate schedule), run_dir.py (the save-dir lock, resume discovery and
compatibility), stopping.py (SIGTERM/SIGINT at a step boundary, the loss/stop collective), distributed.py
(process group, devices, collectives, model wrapping, the main-process check), checkpoint.py (TrainState and
the checkpoint format), loaders.py (samplers, DataLoaders, the run's data), runlog.py (metrics.jsonl,
TensorBoard, progress lines), paths.py (the run's paths, checked when it starts), cli.py (the command line of
train_ddp.py, generated from TrainConfig).
"""
