"""The GPU check's report: DIR/gpu_check.json (everything) and DIR/gpu_check.md (tables for docs/gpu.md)."""

from __future__ import annotations

import json
from pathlib import Path

from rt1.io import atomic_output


def _memory(row: dict) -> str:
    if row.get("oom"):
        return "out of memory"
    if "max_memory_allocated_bytes" in row:
        return f"{row['max_memory_allocated_bytes'] / 2**30:.2f} GiB"
    return f"{row['peak_rss_bytes'] / 2**30:.2f} GiB (CPU RSS)"


def markdown(mode: str, env: dict, results: list[dict], measurements: dict, seconds: float) -> str:
    gpus = ", ".join(env.get("gpus") or []) or "none (CPU)"
    lines = [
        f"### GPU check ({mode} mode)",
        "",
        f"Python {env['python']}, torch {env['torch']}, device {env['device']}, GPUs: {gpus}; "
        f"{seconds:.0f} s wall time.",
        "",
        "| check | result | detail |",
        "|---|---|---|",
    ]
    lines += [f"| {r['name']} | {r['status']} | {r['detail'].replace('|', '/')} |" for r in results]
    training = measurements.get("training", [])
    if training:
        lines += [
            "",
            "| preset | model | activation checkpointing | --chunk-windows | batch per GPU | windows/s per GPU | "
            "peak memory |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in training:
            rate = "-" if row.get("oom") else f"{row['windows_per_s']:.2f}"
            lines.append(
                f"| {row['preset']} | {row['model']} | {'on' if row['activation_checkpointing'] else 'off'} | "
                f"{row.get('chunk_windows', 1)} | {row['batch']} | {rate} | {_memory(row)} |"
            )
    loader = measurements.get("loader", [])
    if loader:
        lines += [
            "",
            "| data loader: --num-workers | preset | batch per GPU | pinned memory | waiting for data | ms per step |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {row['num_workers']} | {row['preset']} | {row['batch']} | {'on' if row['pin_memory'] else 'off'} | "
            f"{100 * row['data_wait_share']:.1f}% | {row['ms_per_step']:.0f} |"
            for row in loader
        ]
    for row in measurements.get("policy", []):
        lines += [
            "",
            f"Policy step ({row['preset']}, {row['device']}): median {row['median_ms']:.1f} ms, "
            f"p99 {row['p99_ms']:.1f} ms over {row['steps']} steps.",
        ]
    if mode == "quick":
        lines += [
            "",
            "Quick mode: tiny sizes; the figures only show that the code paths run, they are not GPU figures.",
        ]
    return "\n".join(lines) + "\n"


def write_report(
    out_dir: Path, *, mode: str, env: dict, results: list[dict], measurements: dict, seconds: float
) -> tuple[Path, Path]:
    failed = [r for r in results if r["status"] == "failed"]
    report = {
        "mode": mode,
        "environment": env,
        "seconds": seconds,
        "status": "failed" if failed else "passed",
        "first_failure": failed[0]["name"] if failed else None,
        "checks": results,
        "measurements": measurements,
    }
    json_path, md_path = out_dir / "gpu_check.json", out_dir / "gpu_check.md"
    with atomic_output(json_path) as tmp:
        tmp.write_text(json.dumps(report, indent=1, default=str) + "\n")
    with atomic_output(md_path) as tmp:
        tmp.write_text(markdown(mode, env, results, measurements, seconds))
    return json_path, md_path
