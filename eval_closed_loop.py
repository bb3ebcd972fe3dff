"""Closed-loop evaluation of a trained checkpoint in the simulated fractal scene (draft CLI).

    python eval_closed_loop.py --checkpoint CK [--episodes 100] [--task-family F ...] [--seed S]
        [--cond-scale S] [--videos K] --out DIR
"""

import sys

from rt1.evaluation.closed_loop import main

if __name__ == "__main__":
    sys.exit(main())
