"""Stage 3: split the preprocessed episodes into train/val and index their 6-step windows.

    python data_emerge.py --data-dir PRE_DIR [--out-dir PRE_DIR] [--val-fraction 0.2] [--seed 0] [--window 6]

writes train_idx_{N}.csv and val_idx_{M}.csv (+ JSON sidecars) into --out-dir, by default PRE_DIR itself
(--val-fraction 0: every episode trains, no val files). See `python data_emerge.py --help`
and rt1/data/index.py.
"""

import sys

from rt1.data.index import main

if __name__ == "__main__":
    sys.exit(main())
