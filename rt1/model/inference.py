"""An inference-only view of a trained RT1: BatchNorms folded into the layers before them.

    fast = inference_model(model)      # eval-only RT1; shares every tensor it does not fold with `model`

In eval mode a BatchNorm is a fixed per-channel affine map, y = x * s + (beta - running_mean * s) with
s = gamma / sqrt(running_var + eps), so it folds into the bias-free layer that feeds it: MBConv's
expansion and projection (Linear) and its depthwise convolution get `weight * s` and a bias, and the
three BatchNorm passes over the (up to 8x wide) MBConv activations disappear. The relative position
bias of every window attention (a gather from its table) is computed once. Same function up to float
rounding (~1e-6 of the logits; tests/model/test_policy.py checks the policy's actions are the same).

The returned model is a new module tree whose unfolded parameters are the original's tensors (no copy
of the ~1 GB of weights): the folded values are a snapshot, so rebuild it after the weights change.
It cannot train (`train()` raises).
"""

from __future__ import annotations

import copy
import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rt1.model.maxvit import MBConv, WindowAttention, gated_linear


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


class FoldedMBConv(nn.Module):
    """MBConv in eval mode with its three BatchNorms folded in: x (N, H, W, C_in) -> (N, H', W', C_out)."""

    def __init__(self, mbconv: MBConv) -> None:
        super().__init__()
        self.residual = mbconv.residual
        self.squeeze_excitation = mbconv.squeeze_excitation  # shared
        with torch.no_grad():
            scale, shift = _bn_scale_shift(mbconv.expand_norm)
            self.expand_weight = nn.Parameter(mbconv.expand.weight * scale[:, None], requires_grad=False)
            self.expand_bias = nn.Parameter(shift, requires_grad=False)
            dw = mbconv.depthwise
            self.depthwise = nn.Conv2d(
                dw.in_channels,
                dw.out_channels,
                dw.kernel_size,
                stride=dw.stride,
                padding=dw.padding,
                groups=dw.groups,
                bias=True,
            )
            scale, shift = _bn_scale_shift(mbconv.depthwise_norm)
            self.depthwise.weight.copy_(dw.weight * scale[:, None, None, None])
            self.depthwise.bias.copy_(shift)
            self.depthwise.requires_grad_(False)
            scale, shift = _bn_scale_shift(mbconv.project_norm)
            self.project_weight = nn.Parameter(mbconv.project.weight * scale[:, None], requires_grad=False)
            self.project_bias = nn.Parameter(shift, requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        h = F.gelu(F.linear(x, self.expand_weight, self.expand_bias))
        h = F.gelu(self.depthwise(h.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        gate = self.squeeze_excitation.gate(h.mean(dim=(1, 2)))
        h = gated_linear(h, gate, self.project_weight) + self.project_bias
        return h + x if self.residual else h


def inference_model(model: nn.Module) -> nn.Module:
    """An eval-only copy of an `RT1` (the MaxViT family) with folded BatchNorms (see the module docstring);
    `RT1.for_inference()` calls it."""
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    fast = copy.deepcopy(model, memo)  # new modules, the same tensors
    fast.eval()
    for block in fast.vit.blocks:
        block.mbconv = FoldedMBConv(block.mbconv)
        for attn in (block.block_attn, block.grid_attn):
            attn.fixed_bias = attn.position_bias().detach()

    def no_training(mode: bool = True):
        if mode:
            raise RuntimeError("an inference_model cannot train: train the original model and fold it again")
        return nn.Module.train(fast, False)

    fast.train = no_training
    return fast


__all__ = ["inference_model", "FoldedMBConv", "WindowAttention"]
