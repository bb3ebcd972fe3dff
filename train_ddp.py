"""Train RT-1: one process, torchrun (single or multi node), or the original's launcher.

    torchrun --nproc_per_node=4 train_ddp.py --data-dir ... --train-index ... --val-index ...
    python train_ddp.py --data-dir PRE_DIR --train-index train_idx_N.csv --val-index val_idx_M.csv [...]
    python -m torch.distributed.launch --nproc_per_node=4 --use_env train_ddp.py --data-dir ... [...]

`python train_ddp.py --help` lists the options; rt1/train/ holds the code. This file only turns the
command line into a TrainConfig, sets up logging and signals (entry-point concerns), calls
rt1.train.trainer.train and maps the outcome to an exit status (rt1.errors.run_cli).
"""

import logging
import os
import sys

from rt1.errors import EXIT_ERROR, run_cli


def _rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def _train(argv=None) -> int:
    from rt1.config import ConfigError
    from rt1.train.cli import build_arg_parser, config_from_args

    parser = build_arg_parser()
    args = parser.parse_args(argv)
    if args.local_rank is not None and "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    logging.basicConfig(
        level=logging.INFO if _rank() == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s [rank " + str(_rank()) + "] %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    try:
        cfg = config_from_args(args)
    except ConfigError as e:
        parser.error(str(e))

    from rt1.train.stopping import install_stop_handlers, stop_when_the_launcher_dies
    from rt1.train.trainer import NonFiniteLossError, StoppedBySignal, train

    # SIGTERM (a scheduler, torchrun) and SIGINT (Ctrl-C): the run stops at the next step boundary on every
    # rank and saves that step; Ctrl-C twice stops at once.
    install_stop_handlers()
    stop_when_the_launcher_dies()  # a killed torchrun agent stops its worker too (torchrun gives them own sessions)
    try:
        train(cfg)
    except (NonFiniteLossError, StoppedBySignal) as e:
        if _rank() == 0:  # every rank knows (the flags are all-reduced); one message is enough
            print(f"error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    return 0


def main(argv=None) -> int:
    return run_cli(_train, argv, label=f"error (rank {_rank()})", default_exit=EXIT_ERROR)


if __name__ == "__main__":
    sys.exit(main())
