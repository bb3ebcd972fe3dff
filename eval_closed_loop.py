"""Closed-loop evaluation of a trained checkpoint in the simulated fractal scene (rt1.sim).

    python eval_closed_loop.py (--checkpoint CK | --server ws://HOST:PORT) [--episodes 100] [--task-family F ...] [--seed S]
        [--cond-scale S] [--videos K] --out DIR

Writes DIR/results.json (the policy, the scripted expert and a no-op policy on the same evaluation
seeds, each with overall and per-family success rates) and DIR/videos/*.gif. CK is a checkpoint file or a
directory of `python -m rt1.export`; with --server the policy acts through `python -m rt1.serve`.
"""

import sys

from rt1.evaluation.closed_loop_cli import main

if __name__ == "__main__":
    sys.exit(main())
