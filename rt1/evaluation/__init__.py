"""Offline evaluation: run the policy over recorded episodes, metrics, predicted-vs-ground-truth plots."""
