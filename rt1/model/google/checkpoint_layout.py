"""Google's checkpoint layout <-> GoogleRT1's state_dict: every tensor of Google's TF checkpoint
(`agent/_actor_network/...`, as in rt1main's `ckpt-424760.index`) and the parameter or buffer it fills.

    layout = checkpoint_layout(model)               # {google key: Slot(our state_dict key, transform)}
    state = state_dict_from_google(model, read)     # read(google key) -> numpy array; checked one by one

Keras stores kernels in its own axis orders; `Slot.transform` names the conversion:

    dense      Dense kernel [in, out]                  -> Linear weight [out, in]
    conv       Conv2D kernel [kh, kw, in, out]         -> Conv2d weight [out, in, kh, kw]
    depthwise  DepthwiseConv2D kernel [kh, kw, C, 1]   -> Conv2d weight [C, 1, kh, kw] (groups = C)
    heads_in   MHA query/key/value kernel [d, h, k]    -> Linear weight [h * k, d]; bias [h, k] -> [h * k]
    heads_out  MHA output kernel [h, k, d]             -> Linear weight [d, h * k]
    same       everything else (biases, LayerNorm/BatchNorm vectors, Normalization mean/variance/count)

The EfficientNet's layers are keyed by position, `net/layer_with_weights-N`: N counts the Keras
functional model's layers that have weights, in order (Normalization, stem conv, stem BatchNorm, then per
block [expand conv, expand BN,] depthwise conv, BN, SE reduce, SE expand, project conv, project BN, FiLM;
then top conv, top BN), which is the order of our modules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from rt1.errors import RT1Error
from rt1.model.google.network import GoogleRT1

NETWORK_PREFIX = "agent/_actor_network/"


class LayoutError(RT1Error, ValueError):
    """A tensor of Google's layout is missing or does not fit; the message names it."""


@dataclass(frozen=True)
class Slot:
    key: str  # our state_dict key
    transform: str  # see the module docstring


def _to_torch(value: np.ndarray, transform: str) -> np.ndarray:
    if transform == "dense" or transform == "heads_out":
        return value.reshape(-1, value.shape[-1]).T
    if transform == "conv":
        return value.transpose(3, 2, 0, 1)
    if transform == "depthwise":
        return value.transpose(2, 3, 0, 1)
    if transform == "heads_in":
        return value.reshape(value.shape[0], -1).T if value.ndim == 3 else value.reshape(-1)
    return value


def _dense(google: str, ours: str) -> dict[str, Slot]:
    return {
        f"{google}/kernel": Slot(f"{ours}.weight", "dense"),
        f"{google}/bias": Slot(f"{ours}.bias", "same"),
    }


def _norm(google: str, ours: str, batch: bool = False) -> dict[str, Slot]:
    slots = {
        f"{google}/gamma": Slot(f"{ours}.weight", "same"),
        f"{google}/beta": Slot(f"{ours}.bias", "same"),
    }
    if batch:
        slots[f"{google}/moving_mean"] = Slot(f"{ours}.running_mean", "same")
        slots[f"{google}/moving_variance"] = Slot(f"{ours}.running_var", "same")
    return slots


def _film(google: str, ours: str) -> dict[str, Slot]:
    return {
        **_dense(f"{google}/_projection_add", f"{ours}.add"),
        **_dense(f"{google}/_projection_mult", f"{ours}.mult"),
    }


def _encoder_layers(model: GoogleRT1) -> list[dict[str, Slot]]:
    """The EfficientNet's layers with weights, in Keras' functional order."""
    e = "encoder"
    layers = [
        {k: Slot(f"{e}.normalization.{k}", "same") for k in ("mean", "variance", "count")},
        {"kernel": Slot(f"{e}.stem_conv.weight", "conv")},
        _norm("", f"{e}.stem_bn", batch=True),
    ]
    for i, block in enumerate(model.encoder.blocks):
        b = f"{e}.blocks.{i}.mbconv"
        if block.mbconv.spec.expand_ratio != 1:
            layers += [{"kernel": Slot(f"{b}.expand_conv.weight", "conv")}, _norm("", f"{b}.expand_bn", True)]
        layers += [
            {"depthwise_kernel": Slot(f"{b}.dwconv.weight", "depthwise")},
            _norm("", f"{b}.bn", batch=True),
            {"kernel": Slot(f"{b}.se_reduce.weight", "conv"), "bias": Slot(f"{b}.se_reduce.bias", "same")},
            {"kernel": Slot(f"{b}.se_expand.weight", "conv"), "bias": Slot(f"{b}.se_expand.bias", "same")},
            {"kernel": Slot(f"{b}.project_conv.weight", "conv")},
            _norm("", f"{b}.project_bn", batch=True),
            _film("", f"{e}.blocks.{i}.film"),
        ]
    layers += [{"kernel": Slot(f"{e}.top_conv.weight", "conv")}, _norm("", f"{e}.top_bn", batch=True)]
    return layers


def checkpoint_layout(model: GoogleRT1) -> dict[str, Slot]:
    """{Google's checkpoint key: the slot of our state_dict it fills}, for every tensor of the network."""
    tokenizer = NETWORK_PREFIX + "_image_tokenizer/"
    layout: dict[str, Slot] = {}
    for n, layer in enumerate(_encoder_layers(model)):
        for name, slot in layer.items():
            layout[f"{tokenizer}_tokenizer/net/layer_with_weights-{n}/{name.lstrip('/')}"] = slot
    layout[f"{tokenizer}_tokenizer/conv1x1/kernel"] = Slot("encoder.conv1x1.weight", "conv")
    layout.update(_film(f"{tokenizer}_tokenizer/film_layer", "encoder.film"))
    layout.update(_norm(f"{tokenizer}_token_learner/layernorm", "token_learner.norm"))
    layout.update(_dense(f"{tokenizer}_token_learner/mlp/_hidden_layer", "token_learner.hidden"))
    layout.update(_dense(f"{tokenizer}_token_learner/mlp/_output_layer", "token_learner.output"))
    t = NETWORK_PREFIX + "_transformer/"
    for i in range(len(model.decoder.layers)):
        g, ours = f"{t}_layers/{i}/", f"decoder.layers.{i}."
        layout.update(_norm(g + "layernorm1", ours + "norm1"))
        layout.update(_norm(g + "layernorm2", ours + "norm2"))
        layout.update(_dense(g + "ff", ours + "ff"))
        for name in ("query", "key", "value"):
            for kind in ("kernel", "bias"):
                layout[f"{g}mha1/_{name}_dense/{kind}"] = Slot(
                    f"{ours}attention.{name}.{'weight' if kind == 'kernel' else 'bias'}", "heads_in"
                )
        layout[f"{g}mha1/_output_dense/kernel"] = Slot(f"{ours}attention.output.weight", "heads_out")
        layout[f"{g}mha1/_output_dense/bias"] = Slot(f"{ours}attention.output.bias", "same")
    layout.update(_dense(t + "_token_emb", "decoder.token_embedding"))
    layout.update(_dense(t + "_position_emb", "decoder.position_embedding"))
    layout.update(_dense(t + "_output_tokens", "decoder.to_logits"))
    layout.update(_dense(NETWORK_PREFIX + "_action_token_emb", "action_token_embedding"))
    return layout


def state_dict_from_google(model: GoogleRT1, read: Callable[[str], np.ndarray]) -> dict[str, Tensor]:
    """Our state_dict, every tensor read from Google's layout; `read(key)` raises KeyError when absent.

    Raises LayoutError naming the first tensor that is missing or has another number of values.
    """
    expected = model.state_dict()
    state: dict[str, Tensor] = {}
    for google_key, slot in checkpoint_layout(model).items():
        try:
            value = np.asarray(read(google_key))
        except KeyError:
            raise LayoutError(f"tensor {google_key} is missing (it fills {slot.key})") from None
        target = expected[slot.key]
        converted = _to_torch(value, slot.transform)
        if converted.size != target.numel() or tuple(converted.shape) != tuple(target.shape):
            raise LayoutError(
                f"tensor {google_key} has shape {list(value.shape)}, {slot.key} needs {list(target.shape)} "
                f"(Google's layout: {slot.transform})"
            )
        # (ascontiguousarray makes a 0-d array 1-d: Normalization's count is a scalar)
        state[slot.key] = (
            torch.from_numpy(np.ascontiguousarray(converted)).reshape(target.shape).to(target.dtype)
        )
    return state
