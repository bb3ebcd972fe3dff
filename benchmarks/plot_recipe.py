"""The figure of docs/evaluation.md's recipe table: closed-loop success against training CPU-minutes.

    python benchmarks/plot_recipe.py [--runs benchmarks/recipe_runs.json] [--out docs/closed_loop_success_vs_cpu.png]

`recipe_runs.json` holds every candidate evaluated for the demo's recipe (issues 18 and 34), each a list of
(training CPU-minutes, successes) on the same evaluation episodes (seed 0; `episodes` per point), and the
`bench_closed_loop.py` runs (56 episodes). The figures were measured as docs/evaluation.md says; this script only
draws them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from matplotlib.figure import Figure

HERE = Path(__file__).resolve().parent


def draw(runs: dict, out: Path) -> None:
    fig = Figure(figsize=(14, 5.5))
    ax = fig.subplots()
    for run in runs["candidates"] + runs["bench"]:
        minutes = [p[0] for p in run["points"]]
        success = [100 * p[1] / run["episodes"] for p in run["points"]]
        ax.plot(minutes, success, run.get("style", "-o"), label=run["label"], color=run.get("color"), ms=6)
    ax.axhline(100, color="green", ls="--", label="scripted expert (28/28, 56/56)")
    ax.axhline(0, color="gray", ls=":", label="no-op (0/28, 0/56)")
    ax.set_xlabel("training CPU-minutes (one process, one thread, AdamW lr 2e-3)")
    ax.set_ylabel("closed-loop success (%)")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(out, dpi=90, bbox_inches="tight")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=Path, default=HERE / "recipe_runs.json", help="the measured points")
    parser.add_argument(
        "--out", type=Path, default=HERE.parent / "docs" / "closed_loop_success_vs_cpu.png", help="the figure"
    )
    args = parser.parse_args()
    draw(json.loads(args.runs.read_text(encoding="utf-8")), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
