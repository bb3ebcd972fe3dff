"""bench_train.py --chunks: windows/s of --chunk-windows K against K = 1 at the same windows per step, side by side.

For each preset: the bundled dataset at the preset's frame size through stages 1-3, the run's real loaders
(`RunData.open`, one per K, 1 DataLoader worker each), one model placed as train_ddp.py places it
(`distributed.wrap_model`) and stepped by `step.train_step` with SGD. The K = 1 and K = K steps alternate
(interleaved, so the machine's load hits both alike); the encoder's share is timed on the same batches: the
forward and backward of `encode_frames` over the batch's frames (B x F at K = 1, each chunk frame once at K)
divided by the step time. Medians over --chunk-steps steps after one warm-up step.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from rt1.config import PRESETS, TrainConfig
from rt1.model import build_model
from rt1.train import distributed as D
from rt1.train.loaders import RunData, TimedBatches
from rt1.train.step import StepSettings, to_device, train_step

BATCH = {"original": 4, "rt1": 4}  # per process on a CPU (the setting); others: the preset's own


def encoder_seconds(model, batch: dict) -> float:
    """Forward + backward of encode_frames over the frames this batch encodes."""
    frames, text, _ = to_device(batch, torch.device("cpu"))
    f = model.config.num_frames
    if "chunk_windows" in batch:
        repeats = batch["chunk_windows"] + (f - 1)
    else:
        frames, repeats = frames.flatten(0, 1), f
    start = time.perf_counter()
    cond = model.condition(text).repeat_interleave(repeats)
    model.encode_frames(frames, cond).float().square().mean().backward()
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return seconds


def compare(preset: str, data_dir: Path, train_index: Path, k: int, steps: int, batch: int | None) -> dict:
    batch = batch or BATCH.get(preset) or PRESETS[preset].train["batch_size"]
    configs = {
        kk: TrainConfig(
            data_dir=data_dir,
            train_index=train_index,
            preset=preset,
            batch_size=batch,
            chunk_windows=kk,
            num_workers=1,
            augment=False,
        )
        for kk in (1, k)
    }
    model_config = configs[1].model_config
    torch.manual_seed(0)
    info = D.DistInfo(0, 1, 0, torch.device("cpu"), None)
    model, forward, _ = D.wrap_model(
        build_model(model_config).train(),
        info,
        sync_bn=False,
        find_unused_parameters=False,
        compile=False,
        log=None,
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
    datas = {kk: RunData.open(cfg, model_config, 0, 1, pin_memory=False) for kk, cfg in configs.items()}
    times = {kk: {"step": [], "encoder": [], "wait": []} for kk in datas}
    try:
        iters = {}
        for kk, data in datas.items():
            data.train_sampler.set_epoch(1)
            iters[kk] = TimedBatches(data.train_loader, 1)
        for step in range(1 + steps):
            for kk, batches in iters.items():
                batches.reset()
                start = time.perf_counter()
                train_step(forward, batches, optimizer, StepSettings(info.device))
                seconds = time.perf_counter() - start
                assert batches.windows == batch, (batches.windows, batch)
                wait = batches.wait
                encoder = encoder_seconds(model, next(iters[kk].batches))
                if step:
                    times[kk]["step"].append(seconds)
                    times[kk]["encoder"].append(encoder)
                    times[kk]["wait"].append(wait)
    finally:
        for data in datas.values():
            data.close()
    out = {"preset": preset, "batch": batch, "frame_size": list(model_config.frame_size), "k": k}
    for kk, t in times.items():
        step_s = statistics.median(t["step"])
        out[kk] = {
            "windows_per_s": batch / step_s,
            "ms_per_step": 1000 * step_s,
            "encoder_share": min(1.0, statistics.median(t["encoder"]) / step_s),
            "data_wait_fraction": sum(t["wait"]) / sum(t["step"]),
        }
    out["ratio"] = out[k]["windows_per_s"] / out[1]["windows_per_s"]
    return out


def print_row(r: dict) -> None:
    k = r["k"]
    print(
        f"{r['preset']:>9} {r['frame_size'][0]}x{r['frame_size'][1]:<4} batch {r['batch']}: "
        f"K=1 {r[1]['windows_per_s']:.2f} windows/s ({r[1]['ms_per_step']:.0f} ms/step, encoder "
        f"{100 * r[1]['encoder_share']:.0f}%), K={k} {r[k]['windows_per_s']:.2f} windows/s "
        f"({r[k]['ms_per_step']:.0f} ms/step, encoder {100 * r[k]['encoder_share']:.0f}%): "
        f"ratio {r['ratio']:.2f}x",
        flush=True,
    )
