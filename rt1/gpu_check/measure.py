"""One measurement of the GPU check, in a process of its own (so peak memory is this measurement's alone):

    python -m rt1.gpu_check.measure '{"kind": "train", "preset": "original", "batch": 8, ...}'

prints one line `RESULT {json}`. Kinds:

    train      training steps of our model (windows/s, peak memory), built and placed as train_ddp.py places
               it (`distributed.wrap_model`: channels_last on the device) and stepped by `step.train_step`
               (autocast and GradScaler as --amp says), with or without activation checkpointing, on windows
               or (spec["chunk_windows"] > 1) on chunks of consecutive windows, at the same windows per step
    reference  the same steps of robotic-transformer-pytorch 0.2.3 (spec["reference_module"]: the file that
               builds it, benchmarks/reference_model.py; the package never imports it)
    policy     `RT1Policy.step` latency on the device (median and p99 over spec["steps"] steps after a warm-up)

Memory: `torch.cuda.max_memory_allocated` on CUDA; on CPU the process's peak RSS (not a GPU figure: the CPU
quick mode reports it so the code path runs, labelled `peak_rss_bytes`).
"""

from __future__ import annotations

import importlib.util
import json
import resource
import statistics
import sys
import time

import numpy as np
import torch

from rt1.config import PRESETS
from rt1.model import action_loss, build_model
from rt1.model.normalize import normalize_frames
from rt1.policy import RT1Policy
from rt1.train import distributed as D
from rt1.train.optim import Optimisation
from rt1.train.step import StepSettings, amp_context, train_step


def model_config(spec: dict):
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.get("overrides", {}).items()}
    return PRESETS[spec["preset"]].model.replace(
        **overrides, activation_checkpointing=bool(spec.get("activation_checkpointing"))
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batches(config, batch: int, device: torch.device, seed: int = 0, chunk_windows: int = 1):
    """The same batch every step; with chunk_windows K > 1 the batch's windows as chunks of K consecutive windows
    (the last shorter; a chunk loader's batches encode as many frames on average: B + chunks x (F - 1))."""
    g = torch.Generator().manual_seed(seed)
    windows = [chunk_windows] * (batch // chunk_windows) + [batch % chunk_windows] * (
        batch % chunk_windows > 0
    )
    chunked = chunk_windows > 1
    shape = (batch + len(windows) * (config.num_frames - 1),) if chunked else (batch, config.num_frames)
    frames = torch.randint(0, 256, (*shape, *config.frame_size, 3), generator=g, dtype=torch.uint8)
    text = torch.randn(len(windows) if chunked else batch, config.text_embed_dim, generator=g)
    tokens = torch.randint(0, config.num_bins, (batch, config.num_frames, config.num_actions), generator=g)
    extra = {"chunk_windows": torch.tensor(windows)} if chunked else {}
    while True:  # the same batch every step (no loader in this measurement: only the model's own cost)
        yield {"frames": frames, "text_embed": text, "action_tokens": tokens, **extra}


def _memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"max_memory_allocated_bytes": int(torch.cuda.max_memory_allocated(device))}
    return {"peak_rss_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024}


def measure_train(spec: dict, device: torch.device) -> dict:
    config = model_config(spec)
    torch.manual_seed(0)
    info = D.DistInfo(0, 1, device.index or 0, device, None)
    if spec["kind"] == "reference":
        loader = importlib.util.spec_from_file_location("reference_model", spec["reference_module"])
        reference_model = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(reference_model)
        bare = reference_model.build_reference(config).train().to(device, memory_format=torch.channels_last)
        forward = None
    else:
        bare, forward, _ = D.wrap_model(
            build_model(config).train(),
            info,
            sync_bn=False,
            find_unused_parameters=False,
            compile=False,
            log=None,
        )
    optimizer = torch.optim.SGD(bare.parameters(), lr=1e-4, momentum=0.9)
    amp = spec.get("amp", "off")
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    opt = Optimisation(optimizer, None, scaler, 1e-4, spec["warmup"] + spec["steps"])
    batches = _batches(config, spec["batch"], device, chunk_windows=int(spec.get("chunk_windows", 1)))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(spec["warmup"] + spec["steps"]):
        _sync(device)
        start = time.perf_counter()
        if forward is not None:
            train_step(forward, batches, opt, StepSettings(device, amp=amp))
        else:  # the reference: float pixels scaled as our config says, in its (B, 3, F, H, W) layout, the original's call
            batch = next(batches)
            video = normalize_frames(batch["frames"].to(device), config.pixel_scaling).permute(0, 4, 1, 2, 3)
            with amp_context(device, amp):
                logits = bare(video, text_embeds=batch["text_embed"].to(device), cond_drop_prob=0.0)
                loss = action_loss(logits, batch["action_tokens"].to(device))
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        _sync(device)
        if step >= spec["warmup"]:
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {
        "windows_per_s": spec["batch"] / seconds,
        "ms_per_step": 1000 * seconds,
        **_memory(device),
        "parameters": sum(p.numel() for p in bare.parameters()),
    }


def measure_policy(spec: dict, device: torch.device) -> dict:
    config = model_config(spec)
    torch.manual_seed(0)
    policy = RT1Policy(build_model(config), device=device)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (8, *config.frame_size, 3), dtype=np.uint8)
    text = rng.standard_normal(config.text_embed_dim).astype(np.float32)
    times = []
    for step in range(spec["warmup"] + spec["steps"]):
        _sync(device)
        start = time.perf_counter()
        policy.step(frames[step % len(frames)], text)  # returns numpy actions: includes the device->host copy
        if step >= spec["warmup"]:
            times.append(time.perf_counter() - start)
    ms = 1000 * np.asarray(times)
    return {
        "median_ms": float(np.median(ms)),
        "p99_ms": float(np.percentile(ms, 99)),
        "steps": len(times),
        **_memory(device),
    }


def main(argv: list[str] | None = None) -> int:
    spec = json.loads((argv if argv is not None else sys.argv[1:])[0])
    device = torch.device(spec["device"])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    result = measure_policy(spec, device) if spec["kind"] == "policy" else measure_train(spec, device)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
