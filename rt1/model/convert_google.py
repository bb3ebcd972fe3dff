"""`python -m rt1.model.convert_google`: Google's RT-1 TF checkpoint -> a model directory
(`rt1.model.google.convert_google` does the work and documents it)."""

from __future__ import annotations

import sys

from rt1.model.google.convert_google import main

if __name__ == "__main__":
    sys.exit(main())
