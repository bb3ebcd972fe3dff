"""bench_model.py's `google` section: Google's RT-1 network (the `rt1` preset) at full size, side by side.

train   forward + backward per window (training mode, cross-entropy) of the `rt1` preset (Google's
        FiLM-EfficientNet network) and the `original` preset (MaxViT), interleaved, median over repeats
policy  RT1Policy.step latency at full size on 2 threads (one new 256x320 frame, the history full)
rtx     RT1Policy.step latency of RT-1-X (GoogleRT1Config.rtx(): 15 frames of 81 + 11 tokens, random weights)
        beside rt1main's (the `rt1` preset), 2 threads, interleaved step by step
google  with --google-ref REF (the reference environment of ../shared/reference/google_rt1/README.md:
        REF/venv, REF/robotics_transformer, REF/stubs): Google's TF code at full size with deterministic
        random weights (benchmarks/google_reference_full.py, run in that venv), its checkpoint loaded into
        ours through rt1.model.google.checkpoint_layout, max |logit diff| over the window, and Google's
        TF policy step time beside ours
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rt1.config import PRESETS
from rt1.google_config import GoogleRT1Config
from rt1.model import action_loss, build_model
from rt1.model.google.checkpoint_layout import state_dict_from_google
from rt1.policy import RT1Policy

HERE = Path(__file__).resolve().parent
TRAIN_TARGET = 5.0  # the issue: at least 5x the original's windows per second
POLICY_TARGET_MS = 100.0


def _inputs(config, batch: int):
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(
        0, 256, (batch, config.num_frames, *config.frame_size, 3), generator=g, dtype=torch.uint8
    )
    text = torch.randn(batch, config.text_embed_dim, generator=g)
    tokens = torch.randint(0, config.num_bins, (batch, config.num_frames, config.num_actions), generator=g)
    return frames, text, tokens


def _train_step(model, frames, text, tokens) -> float:
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    action_loss(model(frames, text), tokens).backward()
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return seconds


def train(batch: int, repeats: int) -> None:
    print(
        f"\n== forward + backward per window: rt1 (Google's) vs original (MaxViT), batch {batch}, full size =="
    )
    presets = ("rt1", "original")
    torch.manual_seed(0)
    models = {p: build_model(PRESETS[p].model).train() for p in presets}
    inputs = {p: _inputs(PRESETS[p].model, batch) for p in presets}
    times = {p: [] for p in presets}
    for p in presets:  # warm-up
        _train_step(models[p], *inputs[p])
    for i in range(repeats):  # interleaved: background load hits both alike
        for p in presets:
            times[p].append(_train_step(models[p], *inputs[p]) / batch)
        print(
            f"  repeat {i + 1}: " + "  ".join(f"{p} {t[-1]:.2f} s/window" for p, t in times.items()),
            flush=True,
        )
    med = {p: statistics.median(v) for p, v in times.items()}
    for p in presets:
        size = "x".join(map(str, PRESETS[p].model.frame_size))
        print(f"  {p:9s} ({size} frames) median {med[p] * 1000:8.0f} ms per window")
    ratio = med["original"] / med["rt1"]
    print(f"  rt1 windows/s over original's: {ratio:.2f}x   target >= {TRAIN_TARGET:.0f}x")


def _policy_median(model, images: np.ndarray, text: np.ndarray, warm: int) -> tuple[float, RT1Policy]:
    torch.set_num_threads(2)
    policy = RT1Policy(model)
    times = []
    for t, image in enumerate(images):
        start = time.perf_counter()
        policy.step(image, text)
        if t >= warm:
            times.append(time.perf_counter() - start)
    return statistics.median(times), policy


def policy(steps: int) -> None:
    config = PRESETS["rt1"].model
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (config.num_frames + steps, *config.frame_size, 3), dtype=np.uint8)
    text = rng.standard_normal(config.text_embed_dim).astype(np.float32)
    torch.manual_seed(0)
    median, _ = _policy_median(build_model(config), images, text, config.num_frames)
    print(
        f"\n== policy step, rt1 (Google's) at full size, 2 threads, {steps} steps after the history is full =="
    )
    print(f"  median {median * 1000:.1f} ms   target <= {POLICY_TARGET_MS:.0f} ms")


def rtx(steps: int) -> None:
    """RT-1-X's policy step beside rt1main's: every RT-1-X step runs the full 15-frame window (1,380 tokens)."""
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    policies = {
        "rt1main": RT1Policy(build_model(PRESETS["rt1"].model)),
        "RT-1-X": RT1Policy(build_model(GoogleRT1Config.rtx())),
    }
    warm = {"rt1main": PRESETS["rt1"].model.num_frames, "RT-1-X": 2}
    times: dict[str, list[float]] = {name: [] for name in policies}
    for t in range(max(warm.values()) + steps):
        for name, pol in policies.items():
            c = pol.config
            image = rng.integers(0, 256, (*c.frame_size, 3), dtype=np.uint8)
            text = np.ones(c.text_embed_dim, np.float32)
            start = time.perf_counter()
            pol.step(image, text)
            if t >= warm[name] and len(times[name]) < steps:
                times[name].append(time.perf_counter() - start)
    print(f"\n== policy step, RT-1-X beside rt1main, full size, 2 threads, median of {steps} steps ==")
    for name, values in times.items():
        c = policies[name].config
        tokens = c.num_frames * c.tokens_per_step
        print(
            f"  {name:8s} {c.num_frames:2d} frames x {c.tokens_per_step} tokens = {tokens:5d}: median {statistics.median(values) * 1000:8.1f} ms"
        )


def _run_google(ref: Path, out: Path, steps: int) -> None:
    env = dict(os.environ, PYTHONPATH=f"{ref}{os.pathsep}{ref / 'stubs'}", TEST_TMPDIR=str(ref / "tmp"))
    command = [
        str(ref / "venv" / "bin" / "python"),
        str(HERE / "google_reference_full.py"),
        "--out",
        str(out),
    ]
    subprocess.run([*command, "--steps", str(steps)], env=env, check=True, stdout=subprocess.DEVNULL)


def google(ref: Path | None, steps: int) -> None:
    print("\n== equality with Google's TF code at full size (rt1main's configuration) ==")
    why = None
    if ref is None:
        why = "no --google-ref REF given"
    elif not (ref / "venv" / "bin" / "python").is_file() or not (ref / "robotics_transformer").is_dir():
        why = f"{ref} has no venv/bin/python or robotics_transformer/"
    if why:
        print(f"  skipped: {why} (the reference environment: ../shared/reference/google_rt1/README.md)")
        return
    from rt1.model.google.convert_google import read_google_checkpoint

    config = PRESETS["rt1"].model
    model = build_model(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        _run_google(ref, Path(tmp), steps)
        tensors = read_google_checkpoint(Path(tmp) / "ckpt" / "rt1")
        io = dict(np.load(Path(tmp) / "io.npz"))
    model.load_state_dict(state_dict_from_google(model, tensors.__getitem__))
    with torch.no_grad():
        logits = model(
            torch.from_numpy(io["image"]), torch.from_numpy(io["natural_language_embedding"][:, 0])
        )
    diff = float((logits - torch.from_numpy(io["infer_logits"])).abs().max())
    images = np.concatenate([io["image"][0], io["image"][0][::-1]])  # 6 frames, then 6 more for timing
    median, _ = _policy_median(model, images, io["natural_language_embedding"][0, 0], config.num_frames)
    theirs = float(io["policy_step_median_s"])
    print(
        f"  max |logit diff| over the 6-frame window: {diff:.2e}  (logit std {io['infer_logits'].std():.2f})"
    )
    print(
        f"  policy step: ours {median * 1000:.1f} ms, Google's TF {theirs * 1000:.0f} ms -> {theirs / median:.1f}x"
    )


def run(sections: list[str], batch: int, repeats: int, policy_steps: int, ref: Path | None) -> None:
    if "train" in sections:
        train(batch, repeats)
    if "policy" in sections:
        policy(policy_steps)
    if "google" in sections:
        google(ref, policy_steps)
    if "rtx" in sections:
        rtx(min(policy_steps, 5))
    sys.stdout.flush()
