"""Stage 2 (all tasks): preprocess segment files for training.

    python DataPreprocess_batch_all.py --in-dir SEG_DIR --out-dir PRE_DIR [--image-size N|HxW|native]
                                       [--workers N] [--delete-input]

See `python DataPreprocess_batch_all.py --help` and rt1/data/preprocess.py.
"""

import sys

from rt1.data.preprocess import main

if __name__ == "__main__":
    sys.exit(main(task_filter="all", prog="DataPreprocess_batch_all.py"))
