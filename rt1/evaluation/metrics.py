"""Offline metrics of predicted action tokens against the recorded episode.

For each episode (and over all steps of all evaluated episodes):
    token_accuracy        fraction of (step, dimension) tokens predicted exactly, over the 11 dimensions
    token_accuracy_per_dim  the same per dimension
    mae                   mean absolute error per continuous dimension in action units: the detokenized
                          prediction against the recorded continuous action (so it includes the
                          tokenizer's quantisation, at most one bin width)
    terminate_accuracy    fraction of steps whose predicted terminate class equals the recorded one
"""

from __future__ import annotations

import numpy as np

from rt1.actions import ACTION_DIM_NAMES, NUM_CONTINUOUS_TOKENS, ActionTokenizer, flatten_actions

CONTINUOUS_NAMES = ACTION_DIM_NAMES[:NUM_CONTINUOUS_TOKENS]


def predicted_actions(tokens: np.ndarray, tokenizer: ActionTokenizer | None = None) -> np.ndarray:
    """Predicted tokens (T, 11) -> continuous values (T, 11) in token order, terminate as its class;
    detokenized with the model's bins and bounds (`tokenizer`, RT-1's if None)."""
    return flatten_actions((tokenizer or ActionTokenizer()).detokenize(np.asarray(tokens)))


def episode_sums(
    pred_tokens: np.ndarray, true_tokens: np.ndarray, true_actions: np.ndarray, tokenizer=None
) -> dict:
    """Additive statistics of one episode (sums, so episodes combine exactly by adding)."""
    pred_tokens, true_tokens = np.asarray(pred_tokens, np.int64), np.asarray(true_tokens, np.int64)
    pred_actions = predicted_actions(pred_tokens, tokenizer)
    return {
        "steps": len(true_tokens),
        "correct_per_dim": (pred_tokens == true_tokens).sum(axis=0),
        "abs_error_per_dim": np.abs(
            pred_actions[:, :NUM_CONTINUOUS_TOKENS] - np.asarray(true_actions)[:, :NUM_CONTINUOUS_TOKENS]
        ).sum(axis=0, dtype=np.float64),
        "terminate_correct": int((pred_actions[:, -1] == np.asarray(true_actions)[:, -1]).sum()),
    }


def summarize(sums: dict) -> dict:
    steps = sums["steps"]
    per_dim = sums["correct_per_dim"] / steps
    return {
        "steps": int(steps),
        "token_accuracy": float(per_dim.mean()),
        "token_accuracy_per_dim": {name: float(v) for name, v in zip(ACTION_DIM_NAMES, per_dim)},
        "mae": {name: float(v) for name, v in zip(CONTINUOUS_NAMES, sums["abs_error_per_dim"] / steps)},
        "terminate_accuracy": float(sums["terminate_correct"] / steps),
    }


def combine(all_sums: list[dict]) -> dict:
    return {key: sum(s[key] for s in all_sums) for key in all_sums[0]}
