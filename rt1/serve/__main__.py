"""python -m rt1.serve: see `rt1.serve`."""

import sys

from rt1.serve.cli import main

if __name__ == "__main__":
    sys.exit(main())
