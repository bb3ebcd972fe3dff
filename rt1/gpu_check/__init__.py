"""The GPU check (`benchmarks/gpu_check.py`, `make gpu-check`): every GPU path exercised and measured in one run.

data      the check's own stage-2 dataset and index (no TensorFlow)
runs      training through the real `torchrun ... train_ddp.py` command line, resume after SIGTERM
measure   one measurement per process: training windows/s and peak memory, policy step latency
report    gpu_check.json and gpu_check.md
cli       the plan, the time budget, the one-line verdict (`main`)
"""
