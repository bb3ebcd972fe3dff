"""Stage 1 (pick tasks): fractal20220817_data RLDS episodes -> segment HDF5 files.

    python data_preprocessing/rt_data_generator_pick_batch.py --data-dir RLDS_DIR --out-dir SEG_DIR [--episode-sec-len 20]
        [--start-episode A] [--end-episode B] [--workers N]

All logic is in rt1.data.convert; this script only selects the task filter 'pick'.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing

from rt1.data.convert import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(task_filter="pick"))
