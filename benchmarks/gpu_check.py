"""One command that proves the GPU path: `python3 benchmarks/gpu_check.py [--quick] --out DIR` (or `make gpu-check`).

Runs with the machine's own python3 from a plain copy of the repository (it puts the repository on sys.path
itself; no install, no network, no TensorFlow). On a CUDA machine it trains through torchrun + NCCL on every
visible GPU (fp32, --amp bf16, --amp fp16, --compile; SIGTERM and resume), measures the full-size presets at
batch 8 per GPU (windows/s, torch.cuda.max_memory_allocated, with and without --activation-checkpointing, the
reference when importable), the data-loader wait share and the policy step latency, in at most 8 minutes.
Without CUDA, --quick runs the same code paths on CPU (gloo) at tiny sizes in under 2 minutes.
Writes DIR/gpu_check.json and DIR/gpu_check.md; exits 1 naming the first failed check. The logic is
rt1/gpu_check/.
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rt1.gpu_check.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(reference_module=REPO / "benchmarks" / "reference_model.py"))
