"""Benchmark the RT-1 model against robotic-transformer-pytorch 0.2.3 (the original's model), side by side.

    python benchmarks/bench_model.py                          # original preset, batch 2: ~15-30 min on 2 cores
    python benchmarks/bench_model.py --sections train,policy  # a subset
    python benchmarks/bench_model.py --preset tiny --sections train,policy --no-reference

One run prints, each as a ratio measured in the same run (absolute times drift with the machine's load):
  equivalence  the `original` preset against the reference at full size (224 x 224, T5's 768-d text):
               perturbed reference weights, BatchNorm statistics from one train-mode pass on raw pixels,
               converted with rt1.model.convert_original; max |logit diff| in eval at cond_scale 1 and 3
  train        forward + backward time (training mode, cross-entropy) of ours, ours with activation
               checkpointing and the reference, interleaved, median over --repeats after a warm-up
  memory       peak memory of one training step, each model and batch in its own process (peak RSS
               above the RSS before the step: activations, gradients, workspaces; CPU bytes as the proxy
               for GPU bytes), at --memory-batches, extrapolated linearly to --target-batch where that
               does not fit in this machine's memory, measured there where it does; which GPU sizes fit
  policy       RT1Policy.step latency on 2 threads at --policy-presets sizes, the three ways interleaved:
               optimised (BatchNorms folded, inference mode, token cache), unoptimised with the cache, and
               re-encoding the 6 frames every step as the reference's loop does; actions compared step by
               step; the FLOPs of a step and this machine's matmul rate give the compute floor
  google       Google's network (the `rt1` preset) at full size: forward + backward per window against the
               `original` preset, its policy step, and with --google-ref REF its logits against Google's own
               TF code (benchmarks/google_section.py)

The reference is optional: without it the ratios against it are skipped, and the benchmark says how to
install it (benchmarks/reference_model.py: a separate venv; run this script with that venv's python).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import google_section  # noqa: E402
import reference_model  # noqa: E402

from rt1.config import PRESETS, RT1Config, model_preset  # noqa: E402
from rt1.model import RT1, action_loss, normalize_frames  # noqa: E402
from rt1.policy import RT1Policy  # noqa: E402

SECTIONS = ("params", "equivalence", "train", "memory", "policy", "google")
GPU_SIZES_GB = (16, 24, 32, 40, 48, 80)
CUDA_OVERHEAD_GB = 1.0  # CUDA context + library workspaces, roughly
POLICY_TARGET_MS = 100.0


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:9.1f} ms"


def gb(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:6.2f} GiB"


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- inputs and one training step ---------------------------------------------------------------------


def training_inputs(config: RT1Config, batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s, f = config.image_size, config.num_frames
    frames = torch.randint(0, 256, (batch, f, s, s, 3), generator=g, dtype=torch.uint8)
    text = torch.randn(batch, config.text_embed_dim, generator=g)
    tokens = torch.randint(0, config.num_bins, (batch, f, config.num_actions), generator=g)
    return frames, text, tokens  # our model scales its uint8 input itself


def build(kind: str, config: RT1Config) -> nn.Module:
    """kind: ours | ours-ckpt | reference, in training mode."""
    torch.manual_seed(0)
    if kind == "reference":
        return reference_model.build_reference(config).train()
    return RT1(config.replace(activation_checkpointing=kind == "ours-ckpt")).train()


def train_step(kind: str, model: nn.Module, frames, text, tokens, config: RT1Config) -> float:
    cond_drop_prob = config.cond_drop_prob
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    if kind == "reference":  # the reference takes float pixels (B, 3, F, H, W), scaled as our config says
        video = normalize_frames(frames, config.pixel_scaling).permute(0, 4, 1, 2, 3)
        logits = model(video, text_embeds=text, cond_drop_prob=cond_drop_prob)
    else:
        logits = model(frames, text, cond_drop_prob=cond_drop_prob)
    action_loss(logits, tokens).backward()
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)  # three full-size models' gradients would hold ~3 GB between steps
    return seconds


# ---- sections -----------------------------------------------------------------------------------------


def section_params(config: RT1Config, preset: str, have_ref: bool) -> None:
    print("\n== parameters ==")
    ours = RT1(config)
    print(f"ours (rt1.model.RT1, preset {preset}):  {count(ours):>13,}")
    if not have_ref:
        return
    ref = reference_model.build_reference(config)
    head = count(ref.vit.mlp_head)
    print(
        f"robotic-transformer-pytorch 0.2.3:    {count(ref):>13,}  (same text width {config.text_embed_dim})"
    )
    print(f"  of which its unused MaxViT ImageNet head {head:,}; used in RT-1: {count(ref) - head:,}")
    folded_biases = sum(
        m.bias.numel()
        for name, m in ref.vit.named_modules()
        if isinstance(m, nn.Conv2d) and m.bias is not None and ".layers." in f".{name}"
    )
    print(
        f"  the reference's conv biases before BatchNorms ({folded_biases:,}) are folded into our BatchNorm "
        "running means (exact);\n  its LayerNorm beta buffers are constant zeros (ours: LayerNorm(bias=False))."
    )
    diffs = []
    if config.attention_memory_kv == 0:
        diffs.append("no MaxViT attention memory key/values (the reference: 4 per attention)")
    if config.token_learner_pooling != "mean":
        diffs.append(
            "Google's TokenLearner (LayerNorm + softmax pooling; the reference: unnormalised mean pooling)"
        )
    if config.transformer_kv_source != "input":
        diffs.append(
            "transformer keys/values from FiLM(LayerNorm(x)) (the reference: from the raw layer input)"
        )
    if diffs:
        print(
            "  this preset is NOT the reference's function: " + "; ".join(diffs) + ".\n"
            "  The `original` preset has the reference's variants (see the equivalence section)."
        )
    else:
        print(
            "  this preset has the reference's three variants (memory key/values, mean-pooling TokenLearner, "
            "raw-input keys/values):\n  after rt1.model.convert_original the two compute the same function "
            "(equivalence section)."
        )


def calibrate_batch_norms(model: nn.Module, video: torch.Tensor, text: torch.Tensor) -> None:
    """Running statistics from one train-mode pass (dropout off), like a trained model's."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    saved_p = [d.p for d in drops]
    with torch.no_grad():
        model.train()
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        for d in drops:
            d.p = 0.0
        model(video, text_embeds=text)
        for bn in bns:
            bn.momentum = 0.1
        for d, p in zip(drops, saved_p):
            d.p = p
    model.eval()


def section_equivalence(have_ref: bool, text_dim: int) -> None:
    print(f"\n== equivalence: preset original vs the reference at full size (224x224, text {text_dim}) ==")
    if not have_ref:
        print("skipped: needs the reference")
        return
    from rt1.model.convert_original import convert_state_dict, infer_config

    base = PRESETS["original"].model
    torch.manual_seed(0)
    ref = reference_model.build_reference(base, text_embed_dim=text_dim)
    g = torch.Generator().manual_seed(0)
    reference_model.perturb(ref, g)
    s = base.image_size
    calibrate_batch_norms(
        ref,
        torch.randint(0, 256, (1, 3, 6, s, s), generator=g).float(),
        torch.randn(1, text_dim, generator=g),
    )
    video_u8 = torch.randint(0, 256, (1, 3, 6, s, s), generator=g, dtype=torch.uint8)
    text = torch.randn(1, text_dim, generator=g)
    sd = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    config = infer_config(sd, image_size=s)
    ours = RT1(config)
    ours.load_state_dict(convert_state_dict(sd, config))
    ours.eval()
    frames = video_u8.permute(
        0, 2, 3, 4, 1
    )  # ours: (B, F, H, W, 3) uint8, scaled as its config says (raw here)
    with torch.no_grad():
        for cond_scale in (1.0, 3.0):
            theirs = ref(video_u8.float(), text_embeds=text, cond_scale=cond_scale)
            mine = ours(frames, text, cond_scale=cond_scale)
            agree = (theirs.argmax(-1) == mine.argmax(-1)).float().mean().item()
            print(
                f"cond_scale {cond_scale:g}: max |logit diff| {(theirs - mine).abs().max().item():.2e} "
                f"(|logits| up to {theirs.abs().max().item():.1f}); argmax agreement {agree:.3f}"
            )
    del ref, ours
    gc.collect()


def section_train(config: RT1Config, kinds: list[str], batch: int, repeats: int) -> None:
    print(
        f"\n== forward + backward (training mode, batch {batch} x {config.num_frames} frames x "
        f"{config.image_size}^2, cond_drop_prob {config.cond_drop_prob}, {torch.get_num_threads()} threads) =="
    )
    frames, text, tokens = training_inputs(config, batch)
    models = {k: build(k, config) for k in kinds}
    times = {k: [] for k in kinds}
    for k in kinds:  # warm-up
        train_step(k, models[k], frames, text, tokens, config)
    for i in range(repeats):  # interleaved: background load hits all alike
        for k in kinds:
            times[k].append(train_step(k, models[k], frames, text, tokens, config))
        print(f"  repeat {i + 1}: " + "  ".join(f"{k} {t[-1]:.2f} s" for k, t in times.items()), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k in kinds:
        print(f"{k:10s} median {fmt_ms(med[k])} (min {fmt_ms(min(times[k]))})")
    if "reference" in med:
        print(f"ours / reference:                   {med['ours'] / med['reference']:.3f}   target <= 0.6")
        if "ours-ckpt" in med:
            print(f"ours with checkpointing / reference: {med['ours-ckpt'] / med['reference']:.3f}")
    if "ours-ckpt" in med:
        print(f"checkpointing / without:            {med['ours-ckpt'] / med['ours']:.3f}   target <= 1.4")
    del models
    gc.collect()


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_worker(kind: str, preset: str, batch: int) -> None:
    """In its own process: peak RSS of one training step above the RSS before it (JSON on stdout)."""
    config = model_preset(preset)
    model = build(kind, config)
    frames, text, tokens = training_inputs(config, batch)
    before = _rss_bytes()
    try:  # reset the high-water mark to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    seconds = train_step(kind, model, frames, text, tokens, config)  # gradients freed after
    peak = _hwm_bytes()
    print(
        json.dumps(
            {
                "kind": kind,
                "batch": batch,
                "delta": peak - before,
                "before": before,
                "peak": peak,
                "hwm_reset": reset,
                "seconds": seconds,
                "params": count(model),
            }
        )
    )


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _run_worker(kind: str, preset: str, batch: int) -> dict | None:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--memory-worker",
        kind,
        "--preset",
        preset,
        "--batch-size",
        str(batch),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        print(f"  {kind} batch {batch}: worker failed ({out.returncode}): {out.stderr.strip()[-300:]}")
        return None
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"  {kind:10s} batch {batch}: peak above the pre-step RSS {gb(result['delta'])}  "
        f"({result['seconds']:.1f} s)",
        flush=True,
    )
    return result


def section_memory(preset: str, kinds: list[str], batches: list[int], target: int) -> None:
    print(f"\n== peak memory of one training step (preset {preset}; each in its own process) ==")
    fits: dict[str, tuple[float, str]] = {}
    params = {}
    for kind in kinds:
        points = {}
        for b in batches:
            r = _run_worker(kind, preset, b)
            if r is not None:
                points[b] = r["delta"]
                params[kind] = r["params"]
        if len(points) < 2:
            continue
        (b0, m0), (b1, m1) = sorted(points.items())[:2]
        per_sample = (m1 - m0) / (b1 - b0)
        predicted = m0 + per_sample * (target - b0)
        print(f"  {kind:10s} {gb(per_sample)} per window -> batch {target} predicted {gb(predicted)}")
        if target not in points and predicted < 0.7 * _available_bytes():
            r = _run_worker(kind, preset, target)
            if r is not None:
                fits[kind] = (r["delta"], "measured")
                continue
        fits[kind] = (predicted, "extrapolated" if target not in points else "measured")
    if not fits:
        return
    print(f"batch {target} per process:")
    for kind, (value, how) in fits.items():
        print(f"  {kind:10s} {gb(value)} ({how})")
    if "reference" in fits:
        for kind in ("ours", "ours-ckpt"):
            if kind in fits:
                print(
                    f"  {kind} / reference: {fits[kind][0] / fits['reference'][0]:.3f}"
                    + ("   target <= 0.5" if kind == "ours-ckpt" else "")
                )
    print(
        f"GPU fit at batch {target} per GPU (weights + SGD momentum 2 x 4 B x params, + the step peak above "
        f"[activations, gradients, workspaces], + ~{CUDA_OVERHEAD_GB:g} GiB CUDA context; CPU bytes as the proxy):"
    )
    for kind, (value, _) in fits.items():
        need = (2 * 4 * params[kind] + value) / 2**30 + CUDA_OVERHEAD_GB
        ok = [f"{s}" for s in GPU_SIZES_GB if need <= s * 0.93]  # ~7% for the allocator's fragmentation
        print(
            f"  {kind:10s} needs ~{need:5.1f} GiB: fits {', '.join(ok) + ' GB' if ok else 'none of'} "
            f"(of {', '.join(map(str, GPU_SIZES_GB))} GB)"
        )


def calibrated_model(config: RT1Config) -> RT1:
    """Random weights, FiLM away from the identity, BatchNorm statistics from one train-mode pass over
    random images (as a trained model has them: folding and the text then matter)."""
    torch.manual_seed(0)
    model = RT1(config)
    g = torch.Generator().manual_seed(0)
    s = config.image_size
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".film." in name and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        frames = torch.randint(0, 256, (1, config.num_frames, s, s, 3), generator=g, dtype=torch.uint8)
        model.train()(frames, torch.randn(1, config.text_embed_dim, generator=g), cond_drop_prob=0.0)
        for bn in bns:
            bn.momentum = 0.1
    return model.eval()


def matmul_gflops(threads: int) -> float:
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    times = []
    for _ in range(7):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * 1024**3 / statistics.median(times) / 1e9


def section_policy(presets: list[str], steps: int, cond_scale: float) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(2)
    print(
        f"\n== policy step (batch 1, {torch.get_num_threads()} threads, cond_scale {cond_scale:g}, "
        f"{steps} steps after the 6-frame history is full) =="
    )
    for preset in presets:
        config = model_preset(preset)
        model = calibrated_model(config)
        policies = {
            "optimised": RT1Policy(model, cond_scale=cond_scale),
            "unoptimised": RT1Policy(model, cond_scale=cond_scale, fold_batch_norms=False),
            "re-encode": RT1Policy(model, cond_scale=cond_scale, use_cache=False, fold_batch_norms=False),
        }
        rng = np.random.default_rng(0)
        s, f = config.image_size, config.num_frames
        images = rng.integers(0, 256, (f + steps, s, s, 3), dtype=np.uint8)
        text = rng.standard_normal(config.text_embed_dim).astype(np.float32)
        times = {k: [] for k in policies}
        tokens = {k: [] for k in policies}
        max_diff = 0.0
        for t, image in enumerate(images):
            for k, policy in policies.items():
                start = time.perf_counter()
                _, tok = policy.step(image, text, return_tokens=True)
                if t >= f:
                    times[k].append(time.perf_counter() - start)
                tokens[k].append(tok)
            max_diff = max(
                max_diff,
                (policies["optimised"].last_logits - policies["unoptimised"].last_logits).abs().max().item(),
            )
        equal = {
            k: all(np.array_equal(a, b) for a, b in zip(tokens[k], tokens["unoptimised"])) for k in policies
        }
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"preset {preset} ({s}x{s}, {model.num_parameters():,} parameters):")
        for k in policies:
            print(
                f"  {k:12s} median {fmt_ms(med[k])} (min {fmt_ms(min(times[k]))})   "
                f"/ re-encode {med[k] / med['re-encode']:.3f}   actions = unoptimised's at all "
                f"{len(images)} steps: {equal[k]}"
            )
        finite = all(torch.isfinite(p.last_logits).all().item() for p in policies.values())
        print(f"  logits finite: {finite}")
        print(
            f"  optimised vs target {POLICY_TARGET_MS:.0f} ms: {med['optimised'] * 1000 / POLICY_TARGET_MS:.2f}x "
            f"the budget; max |logit diff| optimised vs unoptimised {max_diff:.1e}"
        )
        flop_counter = FlopCounterMode(display=False)
        with flop_counter:
            policies["optimised"].step(images[0], text)
        flops = flop_counter.get_total_flops()
        rate = matmul_gflops(2)
        print(
            f"  one cached step: {flops / 1e9:.1f} GFLOP (matmuls/convolutions); this machine's 1024^3 "
            f"matmul now: {rate:.0f} GFLOP/s -> floor {flops / rate / 1e6:.0f} ms at that rate"
        )
        del policies, model


# ---- main ---------------------------------------------------------------------------------------------


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="original", choices=sorted(PRESETS))
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}"
    )
    parser.add_argument("--batch-size", type=int, default=2, help="training batch for the timing")
    parser.add_argument("--repeats", type=int, default=3, help="timed training steps (after one warm-up)")
    parser.add_argument("--memory-batches", default="1,2", help="batches measured in separate processes")
    parser.add_argument(
        "--target-batch", type=int, default=8, help="the per-GPU batch the memory is judged at"
    )
    parser.add_argument(
        "--policy-presets", default="original", help="MaxViT presets (rt1: the google section)"
    )
    parser.add_argument(
        "--google-ref",
        type=Path,
        default=None,
        help="reference environment of Google's TF code (REF with venv/, robotics_transformer/, stubs/)",
    )
    parser.add_argument(
        "--google-sections", default="train,policy,google,rtx", help="parts of the google section"
    )
    parser.add_argument("--policy-steps", type=int, default=8)
    parser.add_argument("--cond-scale", type=float, default=1.0, help="policy guidance scale")
    parser.add_argument(
        "--text-dim", type=int, default=768, help="text width of the equivalence check (T5: 768)"
    )
    parser.add_argument("--no-reference", action="store_true", help="skip robotic-transformer-pytorch")
    parser.add_argument("--memory-worker", choices=("ours", "ours-ckpt", "reference"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_worker:
        memory_worker(args.memory_worker, args.preset, args.batch_size)
        return
    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {SECTIONS}")
    config = model_preset(args.preset)
    have_ref, why = (False, "--no-reference") if args.no_reference else reference_model.available()
    if have_ref and args.preset == "tiny":
        have_ref, why = (
            False,
            "the tiny preset is not expressible by the reference (cond_dim, film_mult, dim_head)",
        )
    print(
        f"RT-1 model benchmark: preset={args.preset} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"load average={os.getloadavg()[0]:.1f} (other processes add noise; compare the ratios)"
    )
    print(
        "reference robotic-transformer-pytorch 0.2.3: "
        + ("available" if have_ref else f"not compared ({why}).\n  To compare: {reference_model.INSTALL}")
    )
    kinds = ["ours", "ours-ckpt"] + (["reference"] if have_ref else [])
    if "params" in sections:
        section_params(config, args.preset, have_ref)
    if "equivalence" in sections:
        section_equivalence(have_ref, args.text_dim)
    if "train" in sections:
        section_train(config, kinds, args.batch_size, args.repeats)
    if "memory" in sections:
        section_memory(
            args.preset, kinds, [int(b) for b in args.memory_batches.split(",")], args.target_batch
        )
    if "policy" in sections:
        section_policy([p for p in args.policy_presets.split(",") if p], args.policy_steps, args.cond_scale)
    if "google" in sections:
        google_section.run(
            args.google_sections.split(","), args.batch_size, args.repeats, args.policy_steps, args.google_ref
        )
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
