"""Checks of a model's weights before they are loaded: exactly the tensors of its config's model (names,
shapes, dtypes, compared with a model built on the meta device) and every value finite."""

from __future__ import annotations

from pathlib import Path

import torch

from rt1.model.factory import build_model
from rt1.model_families import ModelConfig


def check_finite(tensors: dict, where: Path, error: type[Exception]) -> None:
    """Refuse weights with a NaN or infinite value: such a model acts (its argmax of NaN logits is token 0,
    a full-speed -1 motion on every dimension) instead of failing."""
    for name, tensor in tensors.items():
        if (
            isinstance(tensor, torch.Tensor)
            and tensor.is_floating_point()
            and not torch.isfinite(tensor).all()
        ):
            raise error(f"{where}: tensor {name!r} has non-finite values (NaN or inf): refusing to load it")


def check_weights(tensors, config: ModelConfig, where: Path, error: type[Exception], whose: str) -> None:
    """The tensors are exactly those of `config`'s model (names, shapes, dtypes) and finite; compared with
    a model built on the meta device (no memory), before the real one is: a config edited to another size
    is refused before anything is allocated."""
    if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise error(f"{where}: the weights are not a dict of tensors")
    with torch.device("meta"):
        expected = build_model(config).state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        names = missing or unexpected
        more = f" and {len(names) - 1} more" if len(names) > 1 else ""
        what = "missing tensor" if missing else "unexpected tensor"
        raise error(f"{where}: {what} {names[0]!r}{more} for {whose}")
    for name, want in expected.items():
        got = tensors[name]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise error(
                f"{where}: tensor {name!r} is {got.dtype} {tuple(got.shape)}, the model_config "
                f"needs {want.dtype} {tuple(want.shape)}"
            )
    check_finite(tensors, where, error)
