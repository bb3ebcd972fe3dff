"""Predicted (orange) vs ground-truth (blue) action figures, as the original pipeline showed results.

Figures are built with `matplotlib.figure.Figure` (no pyplot, so no global backend state).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from rt1.actions import ACTION_DIM_NAMES, NUM_TERMINATE_CLASSES, TOKEN_HIGH, TOKEN_LOW

GROUND_TRUTH_COLOR = "tab:blue"
PREDICTION_COLOR = "tab:orange"
FRAME_EVERY = 6


def plot_episode(
    path: Path,
    frames: np.ndarray,
    instruction: str,
    true_actions: np.ndarray,
    pred_actions: np.ndarray,
    subtitle: str = "",
) -> None:
    """Write a PNG: a strip of every 6th frame, then one panel per action dimension over time.

    frames uint8 (T, H, W, 3); true_actions, pred_actions (T, 11) in token order (terminate as class).
    """
    steps = np.arange(len(true_actions))
    fig = Figure(figsize=(16, 11), layout="constrained")
    grid = fig.add_gridspec(4, 4, height_ratios=[1.1, 1, 1, 1])
    strip = fig.add_subplot(grid[0, :])
    shown = frames[::FRAME_EVERY]
    strip.imshow(np.concatenate(list(shown), axis=1))
    strip.set_xticks(
        [(i + 0.5) * frames.shape[2] for i in range(len(shown))],
        [f"t={t}" for t in range(0, len(frames), FRAME_EVERY)],
    )
    strip.set_yticks([])
    strip.set_title(f"every {FRAME_EVERY}th frame")
    for i, name in enumerate(ACTION_DIM_NAMES):
        ax = fig.add_subplot(grid[1 + i // 4, i % 4])
        ax.plot(steps, true_actions[:, i], color=GROUND_TRUTH_COLOR, label="ground truth", linewidth=2)
        ax.plot(steps, pred_actions[:, i], color=PREDICTION_COLOR, label="prediction", linewidth=1.5)
        ax.set_title(name)
        ax.set_xlabel("step")
        if name == "terminate":
            ax.set_yticks([0, 1, 2], ["terminate", "arm", "base"])
            ax.set_ylim(-0.2, NUM_TERMINATE_CLASSES - 0.8)
        else:  # the dimension's full action range, so an error looks as large as it is
            margin = 0.05 * (TOKEN_HIGH[i] - TOKEN_LOW[i])
            ax.set_ylim(TOKEN_LOW[i] - margin, TOKEN_HIGH[i] + margin)
    legend_ax = fig.add_subplot(grid[3, 3])
    legend_ax.axis("off")
    legend_ax.legend(*fig.axes[1].get_legend_handles_labels(), loc="center", fontsize=14)
    fig.suptitle(f"{instruction}\n{subtitle}", fontsize=15)
    fig.savefig(path, dpi=80, format="png")


def plot_error_summary(
    path: Path, mae: dict[str, float], token_accuracy: dict[str, float], title: str
) -> None:
    """Write a PNG with the mean absolute error and the token accuracy per action dimension."""
    fig = Figure(figsize=(13, 5), layout="constrained")
    ax_err, ax_acc = fig.subplots(1, 2)
    ax_err.bar(list(mae), list(mae.values()), color=PREDICTION_COLOR)
    ax_err.set_title("mean absolute error (action units)")
    ax_acc.bar(list(token_accuracy), list(token_accuracy.values()), color=GROUND_TRUTH_COLOR)
    ax_acc.set_ylim(0, 1)
    ax_acc.set_title("token accuracy")
    for ax in (ax_err, ax_acc):
        ax.tick_params(axis="x", rotation=60)
    fig.suptitle(title)
    fig.savefig(path, dpi=80, format="png")
