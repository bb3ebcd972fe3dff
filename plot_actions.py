"""Predicted vs ground-truth action plots and offline metrics of a trained checkpoint (a checkpoint file
or a directory of `python -m rt1.export`).

    python plot_actions.py --checkpoint CKPT --data-dir PRE_DIR --index val_idx_M.csv
        [--episode K | --instruction "pick brown chip bag" | --all] [--cond-scale S] [--out DIR]
"""

import sys

from rt1.evaluation.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
