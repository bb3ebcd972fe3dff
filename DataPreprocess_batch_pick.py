"""Stage 2 (pick-object tasks only): preprocess segment files, keeping the episodes the "pick" filter selects.

    python DataPreprocess_batch_pick.py --in-dir SEG_DIR --out-dir PRE_DIR [--image-size N|HxW|native]
                                        [--workers N] [--delete-input]

The filter is `rt1.data.filters` "pick" (the original's rule: "pick" in the instruction, "from" not in it).
See `python DataPreprocess_batch_pick.py --help` and rt1/data/preprocess.py.
"""

import sys

from rt1.data.preprocess import main

if __name__ == "__main__":
    sys.exit(main(task_filter="pick", prog="DataPreprocess_batch_pick.py"))
