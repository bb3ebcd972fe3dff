"""`python3 benchmarks/gpu_check.py [--quick] --out DIR`: one command that checks every GPU path and measures it.

    1 data      its own small dataset in the stage-2 format (rt1.gpu_check.data) and its stage-3 index
    2 training  `torchrun --standalone --nproc-per-node N train_ddp.py` (N = every visible GPU, NCCL; on CPU 2
                processes, gloo) for fp32, --amp bf16, --amp fp16 (GradScaler) and --compile: loss finite and
                falling, checkpoint written, SIGTERM + rerun == the uninterrupted run (rt1.gpu_check.runs)
    3 measures  per full-size preset at batch 8 per GPU: windows/s and peak memory with and without
                --activation-checkpointing, the reference's when robotic-transformer-pytorch is importable
                (rt1.gpu_check.measure, one process each); the data-loader wait share of a train_ddp.py step
                with --num-workers 2/4/8 (pinned memory on CUDA); the policy step latency (median, p99)
    4 report    DIR/gpu_check.json and DIR/gpu_check.md; exit 1 with one line naming the first failed check
                (exit 4, INCOMPLETE, when no training check ran: the budget or the machine skipped them all)

The device, the backend and the amp choice are the only differences between a CUDA run and `--quick` on a
machine without CUDA; --quick also makes everything small (tiny sizes, fewer steps) to finish in under 2
minutes on 2 CPU cores. What a machine cannot do (bf16 on a GPU without it, a second GPU, the reference, the
inductor compile on a CPU in quick mode) is a skipped check with its reason, never a pass.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rt1.errors import RT1Error, run_cli

REPO = Path(__file__).resolve().parents[2]
EXIT_INCOMPLETE = 4  # the essential checks (training) were all skipped: neither a pass nor a failure
FULL_BUDGET_S, QUICK_BUDGET_S = 480.0, 115.0
# --quick: the full-size presets' function at the tiny preset's sizes (64x64, ~0.7 M parameters).
TINY_SIZES = {
    "image_size": 64,
    "conv_stem_dim": 16,
    "dim": 32,
    "dim_head": 16,
    "depth": [1, 1],
    "attention_window": 4,
    "mbconv_expansion": 2,
    "transformer_depth": 2,
    "transformer_heads": 4,
    "transformer_dim_head": 16,
    "cond_dim": 128,
    "film_mult": 2,
    "token_learner_ff_mult": 1,
}
# --quick for Google's network: its function at a small EfficientNet and decoder (64x80 frames).
GOOGLE_TINY_SIZES = {
    "image_height": 64,
    "image_width": 80,
    "encoder_input_size": 64,
    "width_coefficient": 0.25,
    "depth_coefficient": 0.25,
    "num_layers": 2,
    "num_heads": 2,
    "key_dim": 16,
    "model_dim": 64,
}
QUICK_OVERRIDES = {"maxvit": TINY_SIZES, "google_rt1": GOOGLE_TINY_SIZES}


class GpuCheckError(RT1Error):
    """The check cannot start (bad --out, CUDA asked for and missing)."""


@dataclass(frozen=True)
class GpuCheckConfig:
    out: Path
    quick: bool = False
    device: str = "auto"  # auto | cuda | cpu
    budget_s: float | None = None  # wall-time budget; None: 8 minutes (full) / 115 s (quick)
    reference_module: Path | None = None  # benchmarks/reference_model.py (the thin script passes it)


def environment(device: str) -> dict:
    import torch

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "cuda_available": torch.cuda.is_available(),
        "gpus": [],
        "cpu_count": os.cpu_count(),
        "host": platform.node(),
    }
    if device == "cuda":
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        env["cuda"] = torch.version.cuda
        env["bf16_supported"] = bool(torch.cuda.is_bf16_supported())
    return env


def reference_available(module: Path | None) -> tuple[bool, str]:
    if module is None or not Path(module).is_file():
        return False, "no reference builder (benchmarks/reference_model.py) given"
    import importlib.util

    missing = [
        m
        for m in ("robotic_transformer_pytorch", "classifier_free_guidance_pytorch", "einops", "beartype")
        if importlib.util.find_spec(m) is None
    ]
    return (
        (False, f"robotic-transformer-pytorch not importable (missing {', '.join(missing)})")
        if missing
        else (True, "")
    )


class GpuCheck:
    """One run of the check: a list of results (name, status, detail) and the measurements, in order."""

    def __init__(self, cfg: GpuCheckConfig) -> None:
        import torch

        self.cfg, self.start = cfg, time.monotonic()
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise GpuCheckError(
                "--device cuda was asked for but torch.cuda.is_available() is False "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})"
            )
        self.device = (
            "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
        )
        self.gpus = torch.cuda.device_count() if self.device == "cuda" else 0
        self.budget = cfg.budget_s or (QUICK_BUDGET_S if cfg.quick else FULL_BUDGET_S)
        self.results: list[dict] = []
        self.run_ctx = None
        self.measurements: dict = {"training": [], "loader": [], "policy": []}
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        }
        if self.device == "cpu":
            self.env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")

    # ---- bookkeeping ----------------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def add(self, name: str, status: str, detail: str, **extra) -> dict:
        entry = {"name": name, "status": status, "detail": detail, **extra}
        self.results.append(entry)
        mark = {"passed": "ok  ", "failed": "FAIL", "skipped": "skip"}[status]
        print(f"[{self.elapsed():5.0f} s] {mark} {name}: {detail}", flush=True)
        return entry

    def out_of_time(self, name: str, reserve: float = 0.0) -> bool:
        """Skip `name` when it would start less than `reserve` (plus the mode's margin) before the budget ends."""
        if self.elapsed() + reserve + (5.0 if self.cfg.quick else 30.0) <= self.budget:
            return False
        self.add(name, "skipped", f"the {self.budget:.0f} s budget ran out ({self.elapsed():.0f} s used)")
        return True

    # ---- 1: data ----------------------------------------------------------------------------------------

    def make_data(self):
        from rt1.gpu_check.data import write_check_dataset

        t = time.monotonic()
        self.train_data = write_check_dataset(self.cfg.out / "data_64", image_size=64, episodes=16, steps=16)
        self.loader_data = (
            self.train_data
            if self.cfg.quick
            else write_check_dataset(self.cfg.out / "data_224", image_size=224, episodes=48, steps=24)
        )
        self.add(
            "dataset",
            "passed",
            f"stage-2 files and index written in {time.monotonic() - t:.1f} s "
            f"({self.train_data.train_windows} training windows at 64x64)",
        )

    # ---- 2: training through torchrun -------------------------------------------------------------------

    def training(self, modes: tuple[str, ...]) -> None:
        """Train `modes` through torchrun; run first for fp32/bf16/fp16 and last for --compile (its compilation is
        the slowest part of a GPU run, so it gets the time the measurements left)."""
        from rt1.gpu_check.runs import RunContext, train_check

        nproc = max(self.gpus, 1) if self.device == "cuda" else 2
        if self.run_ctx is None:
            self.run_ctx = RunContext(
                REPO,
                self.cfg.out,
                self.train_data,
                self.device,
                nproc,
                steps=10 if self.cfg.quick else 30,
                batch_size=2 if self.cfg.quick else 4,
                env=self.env,
            )
            if self.device == "cuda" and self.gpus < 2:
                self.add(
                    "multi-GPU NCCL", "skipped", f"only {self.gpus} GPU visible: NCCL ran with one process"
                )
        ctx = self.run_ctx
        for mode in modes:
            name = f"train {mode} ({nproc} x {self.device}, {'nccl' if self.device == 'cuda' else 'gloo'})"
            if mode == "bf16" and self.device == "cuda" and not environment("cuda")["bf16_supported"]:
                self.add(name, "skipped", "this GPU has no bf16 support (compute capability below 8.0)")
                continue
            if mode == "compile" and self.cfg.quick and self.device == "cpu":
                self.add(
                    name,
                    "skipped",
                    "--quick on CPU: torch.compile's inductor build takes minutes on a CPU "
                    "(measured 85 s for the tiny model); checked by the full mode on CUDA",
                )
                continue
            if self.out_of_time(name, reserve=20):
                continue
            if mode == "compile":  # the resume check (two more compilations) only if it fits the budget
                r = train_check(
                    ctx,
                    mode,
                    resume=lambda first: self.elapsed() + 2.5 * first < self.budget,
                    no_resume_reason="resume not checked: two more compiled runs would exceed the budget",
                )
            elif (
                self.cfg.quick and mode != "fp32"
            ):  # --quick: the amp modes in 6 steps (fp16 is slow on a CPU)
                r = train_check(
                    dataclasses.replace(ctx, steps=6),
                    mode,
                    resume=False,
                    no_resume_reason="resume not checked (--quick: the resume check runs for fp32 only)",
                )
            else:
                r = train_check(ctx, mode, resume=True)
            self.add(name, r.pop("status"), r.pop("detail"), **r)

    # ---- 3: measurements -----------------------------------------------------------------------------------

    def _child(self, spec: dict, log: Path) -> dict:
        cmd = [sys.executable, "-m", "rt1.gpu_check.measure", json.dumps(spec)]
        timeout = max(
            60.0, self.budget - self.elapsed() + 60.0
        )  # a hung child cannot take the whole machine's slot
        proc = subprocess.run(cmd, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)
        log.write_text(proc.stdout + proc.stderr)
        for line in proc.stdout.splitlines():
            if line.startswith("RESULT "):
                return json.loads(line[len("RESULT ") :])
        if "out of memory" in proc.stderr.lower():
            return {"oom": True}
        tail = [line for line in proc.stderr.strip().splitlines() if line.strip()][-1:] or ["no output"]
        raise RuntimeError(f"exit {proc.returncode}: {tail[0][:300]} (log: {log})")

    def measure_training(self) -> None:
        from rt1.config import DEFAULT_IMAGE_SIZE, PRESETS

        presets = [name for name, p in PRESETS.items() if min(p.model.frame_size) >= DEFAULT_IMAGE_SIZE]
        presets.sort(key=lambda name: name != "original")
        reference = reference_available(self.cfg.reference_module)  # (available, why not)
        logs = self.cfg.out / "measure"
        logs.mkdir(exist_ok=True)
        for preset in presets:
            # --chunk-windows 6 right after K = 1, side by side
            for kind, ckpt, chunks in (
                ("ours", False, 1),
                ("ours", False, 6),
                ("ours", True, 1),
                ("reference", False, 1),
            ):
                self._measure_training_run(preset, kind, ckpt, chunks, logs, reference)

    def _measure_training_run(
        self, preset: str, kind: str, ckpt: bool, chunks: int, logs: Path, reference: tuple
    ) -> None:
        """One training measurement (ours or the reference model) in a child process, added as a check."""
        from rt1.config import PRESETS

        device = "cuda:0" if self.device == "cuda" else "cpu"
        batch, steps, warmup = (2, 2, 1) if self.cfg.quick else (8, 5, 2)
        label = (
            f"{preset} {'reference' if kind == 'reference' else 'ours'}"
            + (" + checkpointing" if ckpt else "")
            + (f" --chunk-windows {chunks}" if chunks > 1 else "")
        )
        name = f"measure {label}"
        if kind == "reference" and PRESETS[preset].model.model_type != "maxvit":
            self.add(name, "skipped", "the reference model is the original's MaxViT network")
            return
        if kind == "reference" and not reference[0]:
            self.add(name, "skipped", reference[1])
            return
        if self.out_of_time(name):
            return
        spec = {
            "kind": "reference" if kind == "reference" else "train",
            "preset": preset,
            "batch": batch,
            "steps": steps,
            "warmup": warmup,
            "device": device,
            "activation_checkpointing": ckpt,
            "chunk_windows": chunks,
            "overrides": QUICK_OVERRIDES[PRESETS[preset].model.model_type] if self.cfg.quick else {},
            "reference_module": str(self.cfg.reference_module),
        }
        try:
            r = self._child(spec, logs / f"{preset}_{kind}_{int(ckpt)}_k{chunks}.log")
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            self.add(name, "failed", str(e))
            return
        row = {
            "preset": preset,
            "model": "reference" if kind == "reference" else "ours",
            "activation_checkpointing": ckpt,
            "chunk_windows": chunks,
            "batch": batch,
            "device": device,
            **r,
        }
        self.measurements["training"].append(row)
        if r.get("oom"):
            self.add(name, "passed", f"batch {batch} does not fit: CUDA out of memory (a measurement)")
        else:
            self.add(name, "passed", f"{r['windows_per_s']:.2f} windows/s, peak {_gib(r)}")

    def measure_loader(self) -> None:
        from rt1.gpu_check.runs import CheckFailed, last_error, losses, run

        ctx, quick = self.run_ctx, self.cfg.quick
        preset, batch, steps, warmup = ("tiny", 4, 6, 2) if quick else ("original", 8, 14, 4)
        for workers in (2,) if quick else (2, 4, 8):
            name = f"loader wait, --num-workers {workers}"
            if self.out_of_time(name, reserve=10):
                continue
            save = self.cfg.out / "loader" / f"workers_{workers}"
            # Full size: with activation checkpointing, so batch 8 of `original` fits a 16 GB GPU (docs/gpu.md).
            cmd = ctx.command(
                save,
                [] if quick else ["--activation-checkpointing"],
                preset=preset,
                max_steps=steps,
                num_workers=workers,
                batch_size=batch,
                data=self.loader_data,
            )
            save.mkdir(parents=True, exist_ok=True)
            try:
                if run(ctx, cmd, save / "train.log") != 0 or len(losses(save)) != steps:
                    raise CheckFailed(f"train_ddp.py failed: {last_error(save / 'train.log')}")
            except CheckFailed as e:
                self.add(name, "failed", str(e))
                continue
            from rt1.train.runlog import read_metrics

            rows = [m for m in read_metrics(save / "metrics.jsonl") if m["event"] == "train"][warmup:]
            seconds, wait = sum(m["seconds"] for m in rows), sum(m["data_wait"] for m in rows)
            share = wait / seconds
            self.measurements["loader"].append(
                {
                    "preset": preset,
                    "num_workers": workers,
                    "batch": batch,
                    "processes": ctx.nproc,
                    "pin_memory": self.device == "cuda",
                    "activation_checkpointing": not quick,
                    "data_wait_share": share,
                    "ms_per_step": 1000 * seconds / len(rows),
                }
            )
            self.add(
                name,
                "passed",
                f"waiting for data {100 * share:.1f}% of a step ({preset}, batch {batch}, "
                f"pin_memory {'on' if self.device == 'cuda' else 'off (CPU)'})",
            )

    def measure_policy(self) -> None:
        name = "policy step latency (original)"
        if self.out_of_time(name):
            return
        device = "cuda:0" if self.device == "cuda" else "cpu"
        spec = {
            "kind": "policy",
            "preset": "original",
            "overrides": TINY_SIZES if self.cfg.quick else {},
            "device": device,
            "steps": 10 if self.cfg.quick else 100,
            "warmup": 3 if self.cfg.quick else 10,
        }
        try:
            r = self._child(spec, self.cfg.out / "measure" / "policy.log")
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            self.add(name, "failed", str(e))
            return
        self.measurements["policy"].append({"preset": "original", "device": device, **r})
        self.add(
            name,
            "passed",
            f"median {r['median_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms over {r['steps']} steps",
        )

    # ---- the run ---------------------------------------------------------------------------------------------

    def run(self) -> int:
        from rt1.gpu_check.report import write_report

        mode = "quick" if self.cfg.quick else "full"
        print(
            f"gpu_check ({mode}): device {self.device}, {self.gpus} GPU(s), budget {self.budget:.0f} s, "
            f"output {self.cfg.out}",
            flush=True,
        )
        env = environment(self.device)
        self.make_data()
        self.training(("fp32", "bf16", "fp16"))
        self.measure_training()
        self.measure_loader()
        self.measure_policy()
        self.training(("compile",))
        failed = [r for r in self.results if r["status"] == "failed"]
        json_path, md_path = write_report(
            self.cfg.out,
            mode=mode,
            env=env,
            results=self.results,
            measurements=self.measurements,
            seconds=self.elapsed(),
        )
        skipped = sum(r["status"] == "skipped" for r in self.results)
        trained = [r for r in self.results if r["name"].startswith("train ") and r["status"] == "passed"]
        if failed:
            print(
                f"gpu_check: FAILED: {failed[0]['name']}: {failed[0]['detail']}", file=sys.stderr, flush=True
            )
            return 1
        if not trained:  # nothing that matters ran: not a pass
            print(
                f"gpu_check: INCOMPLETE: no training check ran ({skipped} checks skipped, budget "
                f"{self.budget:.0f} s); report {md_path}",
                file=sys.stderr,
                flush=True,
            )
            return EXIT_INCOMPLETE
        print(
            f"gpu_check: passed ({len(self.results) - skipped} checks passed, {skipped} skipped) in "
            f"{self.elapsed():.0f} s; report {md_path} and {json_path}",
            flush=True,
        )
        return 0


def _gib(r: dict) -> str:
    if "max_memory_allocated_bytes" in r:
        return f"{r['max_memory_allocated_bytes'] / 2**30:.2f} GiB (torch.cuda.max_memory_allocated)"
    return f"{r['peak_rss_bytes'] / 2**30:.2f} GiB (CPU peak RSS, not a GPU figure)"


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpu_check.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--out", type=Path, required=True, help="new or empty directory for the report and the runs"
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes and few steps (CPU: under 2 minutes)")
    p.add_argument(
        "--device",
        choices=("auto", "cuda", "cpu"),
        default="auto",
        help="auto: CUDA when available (default auto)",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help=f"wall-time budget in seconds (default {FULL_BUDGET_S:.0f}, --quick {QUICK_BUDGET_S:.0f}): "
        "checks that would start after it are reported as skipped",
    )
    return p


def main(argv: list[str] | None = None, *, reference_module: Path | None = None) -> int:
    def _main(argv):
        args = build_arg_parser().parse_args(argv)
        import importlib.util

        missing = [m for m in ("torch", "numpy", "h5py", "PIL") if importlib.util.find_spec(m) is None]
        if missing:
            raise GpuCheckError(
                f"{sys.executable} cannot import {', '.join(missing)}: run the check with a python "
                "that has PyTorch (make gpu-check uses .venv when there is one)"
            )
        out = args.out
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise GpuCheckError(f"--out {out} must be a new or empty directory")
        if args.budget_s is not None and not (math.isfinite(args.budget_s) and args.budget_s > 0):
            raise GpuCheckError(f"--budget-s must be a finite number of seconds > 0, got {args.budget_s}")
        cfg = GpuCheckConfig(out.resolve(), args.quick, args.device, args.budget_s, reference_module)
        check = GpuCheck(cfg)  # refuses a missing CUDA before --out exists: a refused run leaves no directory
        out.mkdir(parents=True, exist_ok=True)
        return check.run()

    return run_cli(_main, argv, label="gpu_check: error")
