"""Distributed training of RT-1 (`train_ddp.py`). Import what you need from the modules:

    from rt1.config import TrainConfig
    from rt1.train.trainer import train
    result = train(TrainConfig(preset="tiny", data_dir=..., train_index=..., val_index=...))

trainer.py (the loop), distributed.py (process group, devices, collectives, the main-process check),
checkpoint.py (TrainState and the checkpoint format), loaders.py (samplers, DataLoaders), runlog.py
(metrics.jsonl, TensorBoard), cli.py (the command line of train_ddp.py, generated from TrainConfig).
"""
