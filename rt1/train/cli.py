"""The command line of train_ddp.py: `build_arg_parser()` and `config_from_args(args) -> TrainConfig`."""

from __future__ import annotations

import argparse
from pathlib import Path

from rt1.train.config import AMP_MODES, DEVICES, OPTIMIZERS, PRESET_DEFAULTS, TrainConfig

_PRESET_DEPENDENT = ("optimizer", "lr", "weight_decay", "batch_size", "epochs")


def _preset_default(name: str) -> str:
    return ", ".join(f"{preset} {values[name]}" for preset, values in PRESET_DEFAULTS.items())


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_ddp.py",
        description=(
            "Train RT-1 on preprocessed windows (DataPreprocess_batch_*.py + data_emerge.py output), in one process "
            "or data-parallel: `python train_ddp.py ...`, `torchrun --nproc_per_node=N train_ddp.py ...` (also "
            "multi-node) or `python -m torch.distributed.launch --nproc_per_node=N --use_env train_ddp.py ...`. "
            "NCCL on CUDA, gloo on CPU. Writes {save-dir}/checkpoint-{epoch}.pt every epoch (the last "
            "--keep-checkpoints kept), metrics.jsonl and TensorBoard events. Rerunning the same command resumes "
            "from the newest checkpoint in --save-dir."),
        epilog=("Exit status: 0 done; 1 error; 2 bad arguments; 3 non-finite loss (the last good checkpoint is "
                "kept); 130 interrupted (Ctrl-C); 143 terminated (SIGTERM). No partial checkpoint is ever left "
                "under a final name."),
    )
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", type=Path, required=True, help="directory of preprocessed files (stage 2 output)")
    g.add_argument("--train-index", type=Path, required=True, help="train_idx_{N}.csv from data_emerge.py")
    g.add_argument("--val-index", type=Path, default=None,
                   help="val_idx_{M}.csv from data_emerge.py (default: no validation)")
    g.add_argument("--num-workers", type=int, default=2, help="DataLoader worker processes per training process "
                                                               "(default 2)")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="RT-1's random shift of training windows (default on)")
    g.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=True,
                   help="shuffle training windows every epoch (default on)")

    g = p.add_argument_group("model")
    g.add_argument("--preset", default="rt1", choices=sorted(PRESET_DEFAULTS),
                   help="model preset: rt1 (the original, 224x224) or tiny (64x64, trains on CPU) (default rt1)")
    g.add_argument("--cond-drop-prob", type=float, default=None,
                   help="probability of training a window without its instruction (classifier-free guidance; "
                        "default: the preset's, 0.2)")
    g.add_argument("--syncBN", dest="sync_bn", action=argparse.BooleanOptionalAction, default=True,
                   help="SyncBatchNorm across processes; only with NCCL/CUDA, ignored with a warning on CPU "
                        "(default on)")
    g.add_argument("--freeze-bn", action="store_true",
                   help="BatchNorm layers use their running statistics and do not update them")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=None, help=f"epochs (default: {_preset_default('epochs')})")
    g.add_argument("--batch-size", type=int, default=None,
                   help=f"windows per process per micro-batch (default: {_preset_default('batch_size')})")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                   help=f"sgd (momentum --momentum) or adamw (default: {_preset_default('optimizer')})")
    g.add_argument("--lr", type=float, default=None,
                   help=f"learning rate per process; the optimizer uses lr x number of processes, as the original "
                        f"(default: {_preset_default('lr')})")
    g.add_argument("--lrf", type=float, default=0.1,
                   help="final lr as a fraction of the initial one; per-step cosine decay (default 0.1)")
    g.add_argument("--weight-decay", type=float, default=None,
                   help=f"weight decay (default: {_preset_default('weight_decay')})")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    g.add_argument("--clip-grad-norm", type=float, default=None, help="clip the gradient norm to this (default: off)")
    g.add_argument("--amp", choices=AMP_MODES, default="off",
                   help="mixed precision: fp16 (with a GradScaler, e.g. V100), bf16 (Ampere+, CPU) or off "
                        "(default off)")
    g.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many optimizer steps in total (the lr schedule then spans them); writes a "
                        "resumable checkpoint where it stops")
    g.add_argument("--seed", type=int, default=0, help="seed of weights, data order and augmentation (default 0)")

    g = p.add_argument_group("output")
    g.add_argument("--save-dir", type=Path, default=None,
                   help="checkpoints, metrics.jsonl and TensorBoard events (default save/{model}_{describe}, "
                        "e.g. save/rt1_ddp, save/rt1_tiny_ddp)")
    g.add_argument("--describe", default="ddp", help="run name used in the default --save-dir (default ddp)")
    g.add_argument("--resume", type=Path, default=None,
                   help="checkpoint to resume from (default: the newest checkpoint-*.pt in --save-dir, if any)")
    g.add_argument("--keep-checkpoints", type=int, default=3, help="checkpoints kept (default 3)")
    g.add_argument("--log-every", type=int, default=10,
                   help="optimizer steps between TensorBoard/progress updates (default 10; metrics.jsonl gets "
                        "every step)")
    g.add_argument("--val-every", type=int, default=1,
                   help="epochs between validations; the last epoch always validates; 0 = never (default 1)")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="tqdm progress bar on rank 0 (default on)")
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
                   help="TensorBoard events in --save-dir (default on)")

    g = p.add_argument_group("processes")
    g.add_argument("--device", choices=DEVICES, default="auto",
                   help="auto: cuda:LOCAL_RANK when CUDA is available, else cpu (default auto)")
    g.add_argument("--dist-timeout", type=float, default=900.0,
                   help="seconds a process waits for the others in a collective before failing (default 900)")
    # torch.distributed.launch without --use_env passes --local-rank; LOCAL_RANK in the environment wins.
    g.add_argument("--local-rank", "--local_rank", dest="local_rank", type=int, default=None, help=argparse.SUPPRESS)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from parsed arguments (preset defaults fill the options left unset). Raises ValueError."""
    values = {name: getattr(args, name) for name in TrainConfig.field_names() if hasattr(args, name)}
    for name in _PRESET_DEPENDENT:
        if values.get(name) is None:
            values.pop(name, None)
    preset = values.pop("preset")
    try:
        return TrainConfig.for_preset(preset, **values)
    except ValueError as e:
        message = str(e)
        for name in TrainConfig.field_names():  # name the option the user typed, not the field
            option = "--syncBN" if name == "sync_bn" else "--" + name.replace("_", "-")
            message = message.replace(f"TrainConfig.{name} ", f"{option} ")
        raise ValueError(message) from None


__all__ = ["build_arg_parser", "config_from_args"]
