"""Train RT-1: one process, torchrun (single or multi node), or the original's launcher.

    python train_ddp.py --data-dir PRE_DIR --train-index train_idx_N.csv --val-index val_idx_M.csv [...]
    torchrun --nproc_per_node=4 train_ddp.py --data-dir ... --train-index ... --val-index ...
    python -m torch.distributed.launch --nproc_per_node=4 --use_env train_ddp.py --data-dir ... [...]

`python train_ddp.py --help` lists the options; rt1/train/ holds the code. This file only turns the
command line into a TrainConfig, sets up logging and signals (entry-point concerns), calls
rt1.train.train and maps the outcome to an exit status.
"""

import logging
import os
import signal
import sys


class Terminated(BaseException):
    """SIGTERM (torchrun stopping the job, a scheduler's kill) as an exception, so cleanup runs."""


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv=None) -> int:
    from rt1.train.cli import build_arg_parser, config_from_args

    parser = build_arg_parser()
    args = parser.parse_args(argv)
    if args.local_rank is not None and "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    rank = int(os.environ.get("RANK", "0") or 0)
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s [rank " + str(rank) + "] %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        parser.error(str(e))

    from rt1.data.dataset import DatasetError
    from rt1.data.index import WindowIndexError
    from rt1.train import (
        EXIT_ERROR, EXIT_NON_FINITE_LOSS, EXIT_OK, CheckpointError, NonFiniteLossError, ResumeError, TrainSetupError,
        train,
    )
    from rt1.train.distributed import DistributedSetupError

    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        train(cfg)
    except NonFiniteLossError as e:
        # Every rank knows (the flag is all-reduced); one message is enough.
        if rank == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_NON_FINITE_LOSS
    except (DatasetError, WindowIndexError, CheckpointError, ResumeError, TrainSetupError, DistributedSetupError) as e:
        print(f"error (rank {rank}): {e}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"interrupted (rank {rank}); checkpoints on disk are complete", file=sys.stderr, flush=True)
        return 130
    except Terminated:
        print(f"terminated by SIGTERM (rank {rank}); checkpoints on disk are complete", file=sys.stderr, flush=True)
        return 143
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
