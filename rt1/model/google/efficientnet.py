"""Google's FiLM-EfficientNet image encoder (robotics_transformer/film_efficientnet), in PyTorch.

    pixels (N, 3, S, S) float, ImageNet-normalised (`preprocess`), modulations of the 27 FiLM layers
      stem:  zero-pad (0, 1) -> conv 3x3 stride 2 -> BatchNorm -> swish
      26 MBConv blocks (B3), each followed by FiLM: x -> (1 + mult(c)) * x + add(c)
      top:   conv 1x1 -> BatchNorm -> swish -> conv 1x1 to 512 (no bias) -> FiLM
    -> feature map (N, 512, s, s), s = 9 for S = 300

Semantics copied from Google's code (file:line of film_efficientnet_encoder.py at commit 4569641):
  - a stride-2 convolution is preceded by zero padding ((k//2 - 1, k//2), (k//2 - 1, k//2)) and has no
    padding of its own: Google builds the Keras model with input (None, None, 3), so `correct_pad` takes
    its unknown-size branch (L230-231). Every stride-2 stage halves with floor: 300 -> 150 -> 75 -> 37
    -> 18 -> 9. RT-1-X (config.stride2_padding="same") pads as XLA's 'SAME' instead (the release's
    efficientnet.py L276): total max((ceil(n/2) - 1) * 2 + k - n, 0), the smaller half before:
    300 -> 150 -> 75 -> 38 -> 19 -> 10;
  - stride-1 depthwise convolutions pad k//2 on every side ('same');
  - squeeze-excitation to max(1, filters_in * 0.25) channels with swish, back with a sigmoid (L562-586);
  - BatchNorm eps 1e-3, Keras momentum 0.99 (torch momentum 0.01);
  - drop-connect (stochastic depth) on residual blocks in training at rate drop_connect_rate * b / blocks
    for block b (L386, L598-601);
  - FiLM after every block (L493-495) and after the 1x1 projection (pretrained_efficientnet_encoder.py
    L113-116); the context is the raw 512-d instruction embedding.
BatchNorms keep no `num_batches_tracked` (Keras has none; a checkpoint of Google's layout maps one to one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rt1.google_config import IMAGE_TOKEN_WIDTH, GoogleRT1Config
from rt1.model.checkpointing import checkpointed
from rt1.model.film import modulate

# Keras' EfficientNet-B0 block table (film_efficientnet_encoder.py DEFAULT_BLOCKS_ARGS):
# (kernel, repeats, filters_in, filters_out, expand_ratio, stride)
B0_STAGES = (
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
)
SE_RATIO = 0.25
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # Keras' momentum 0.99
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)  # Google's constant Rescaling(1 / sqrt(std)) after Normalization


# ---- helpers ---------------------------------------------------------------------------------------


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Keras' channel rounding for a width coefficient (film_efficientnet_encoder.py round_filters)."""
    filters *= width
    rounded = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * filters:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(depth * repeats))


@dataclass(frozen=True)
class BlockSpec:
    kernel: int
    filters_in: int
    filters_out: int
    expand_ratio: int
    stride: int
    drop_rate: float
    padding: str = "tf_asymmetric"  # before a stride-2 convolution: GoogleRT1Config.stride2_padding


def block_specs(config: GoogleRT1Config) -> list[BlockSpec]:
    """Every MBConv block of the FiLM-EfficientNet in order (B3: 26 blocks)."""
    w, d = config.width_coefficient, config.depth_coefficient
    total = sum(round_repeats(stage[1], d) for stage in B0_STAGES)
    specs: list[BlockSpec] = []
    for kernel, repeats, f_in, f_out, expand, stride in B0_STAGES:
        f_in, f_out = round_filters(f_in, w), round_filters(f_out, w)
        for j in range(round_repeats(repeats, d)):
            rate = config.drop_connect_rate * len(specs) / total
            specs.append(
                BlockSpec(
                    kernel,
                    f_in if j == 0 else f_out,
                    f_out,
                    expand,
                    stride if j == 0 else 1,
                    rate,
                    config.stride2_padding,
                )
            )
    return specs


def pad_for_stride_2(x: Tensor, kernel: int) -> Tensor:
    """Google's zero padding before a stride-2 convolution: one less before than after."""
    before, after = kernel // 2 - 1, kernel // 2
    return F.pad(x, (before, after, before, after))


def pad_same_stride_2(x: Tensor, kernel: int) -> Tensor:
    """XLA's 'SAME' zero padding before a stride-2 convolution (RT-1-X, stride2_padding="same"): output
    ceil(n / 2), the smaller half of the total before."""
    pads = []
    for n in (x.shape[3], x.shape[2]):  # F.pad's order: width, then height
        total = max((-(-n // 2) - 1) * 2 + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def drop_connect_add(x: Tensor, residual: Tensor, rate: float, training: bool) -> Tensor:
    """residual + Keras Dropout(rate, noise_shape=(N, 1, 1, 1))(x): whole samples' branches dropped in
    training, the others scaled by 1 / (1 - rate)."""
    if not training or rate == 0.0:
        return x + residual
    keep = torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) >= rate
    return torch.addcmul(residual, x, keep.to(x.dtype) / (1.0 - rate))


# ---- leaf modules ----------------------------------------------------------------------------------


class BatchNorm(nn.BatchNorm2d):
    """Keras' BatchNormalization (eps 1e-3, momentum 0.99) without a num_batches_tracked buffer.

    On the CPU, torch's kernel loses precision in a channels_last tensor's batch variance (measured in
    float32: after a few blocks ~4e-4 of the activations with one thread, off Google's output and off itself
    with two threads); on NCHW tensors it is exact to ~4e-6. So GoogleRT1 trains in NCHW on the CPU
    (`encode_frames`); on the GPU (cuDNN) and in eval mode channels_last is exact and faster.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.num_batches_tracked = None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        # A state_dict without torch's version metadata (safetensors, Google's layout) would get a
        # num_batches_tracked added by the version-1 upgrade path; this module has none.
        local_metadata = {**local_metadata, "version": self._version}
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)


class FiLM(nn.Module):
    """Google's FilmConditioning: context (N, 512) -> modulation (N, 2C) = [mult, add], zero at init."""

    def __init__(self, context_dim: int, channels: int) -> None:
        super().__init__()
        self.mult = nn.Linear(context_dim, channels)
        self.add = nn.Linear(context_dim, channels)
        for layer in (self.mult, self.add):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, context: Tensor) -> Tensor:
        return torch.cat((self.mult(context), self.add(context)), dim=-1)


def film(x: Tensor, modulation: Tensor) -> Tensor:
    """x (N, C, H, W), modulation (N, 2C) -> (1 + mult) * x + add."""
    return modulate(x.permute(0, 2, 3, 1), modulation).permute(0, 3, 1, 2)


class ImageNormalization(nn.Module):
    """Keras' Rescaling(1/255) -> Normalization(mean, variance) -> Rescaling(1/sqrt(std)) on [0, 1] pixels.

    mean, variance and count are the Normalization layer's weights (Google's checkpoint holds them);
    initialised to ImageNet's values as Google's .h5 has them (variance = std, hence the second rescaling).
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor((0.485, 0.456, 0.406)))
        self.register_buffer("variance", torch.tensor(IMAGENET_STD_RGB))
        self.register_buffer("count", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("rescale", torch.tensor(IMAGENET_STD_RGB).rsqrt(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """x (N, 3, H, W) in [0, 1] -> normalised, same shape."""
        std = self.variance.sqrt().clamp_min(1e-7)  # Keras: max(sqrt(variance), epsilon)
        scale = (self.rescale / std)[:, None, None]
        return (x - self.mean[:, None, None]) * scale


class ConstantNormalization(nn.Module):
    """RT-1-X's (x - ImageNet mean) / ImageNet std with constants (the release's rt1.py L154-155): no weights."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor((0.485, 0.456, 0.406)), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD_RGB), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """x (N, 3, H, W) in [0, 1] -> normalised, same shape."""
        return (x - self.mean[:, None, None]) / self.std[:, None, None]


class MBConv(nn.Module):
    """One inverted-residual block: [expand 1x1] -> depthwise kxk -> SE -> project 1x1 [+ residual]."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        self.spec = spec
        hidden = spec.filters_in * spec.expand_ratio
        if spec.expand_ratio != 1:
            self.expand_conv = nn.Conv2d(spec.filters_in, hidden, 1, bias=False)
            self.expand_bn = BatchNorm(hidden)
        padding = 0 if spec.stride == 2 else spec.kernel // 2
        self.dwconv = nn.Conv2d(
            hidden, hidden, spec.kernel, stride=spec.stride, padding=padding, groups=hidden, bias=False
        )
        self.bn = BatchNorm(hidden)
        squeezed = max(1, int(spec.filters_in * SE_RATIO))
        self.se_reduce = nn.Conv2d(hidden, squeezed, 1)
        self.se_expand = nn.Conv2d(squeezed, hidden, 1)
        self.project_conv = nn.Conv2d(hidden, spec.filters_out, 1, bias=False)
        self.project_bn = BatchNorm(spec.filters_out)
        self.residual = spec.stride == 1 and spec.filters_in == spec.filters_out

    def forward(self, x: Tensor) -> Tensor:
        """x (N, C_in, H, W) -> (N, C_out, H', W')"""
        h = F.silu(self.expand_bn(self.expand_conv(x))) if self.spec.expand_ratio != 1 else x
        if self.spec.stride == 2:
            pad = pad_for_stride_2 if self.spec.padding == "tf_asymmetric" else pad_same_stride_2
            h = pad(h, self.spec.kernel)
        h = F.silu(self.bn(self.dwconv(h)))
        se = F.silu(self.se_reduce(h.mean(dim=(2, 3), keepdim=True)))
        h = h * torch.sigmoid(self.se_expand(se))
        h = self.project_bn(self.project_conv(h))
        if self.residual:
            h = drop_connect_add(h, x, self.spec.drop_rate, self.training)
        return h


class FiLMBlock(nn.Module):
    """An MBConv block followed by its FiLM layer (the unit activation checkpointing recomputes)."""

    def __init__(self, spec: BlockSpec, context_dim: int) -> None:
        super().__init__()
        self.mbconv = MBConv(spec)
        self.film = FiLM(context_dim, spec.filters_out)

    def forward(self, x: Tensor, modulation: Tensor) -> Tensor:
        return film(self.mbconv(x), modulation)


def fold_batch_norm(conv: nn.Conv2d, bn: BatchNorm) -> nn.Conv2d:
    """The eval-mode composition bn(conv(x)) as one convolution with a bias (a new module)."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    folded = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        groups=conv.groups,
        bias=True,
    ).to(conv.weight.device)
    with torch.no_grad():
        folded.weight.copy_(conv.weight * scale[:, None, None, None])
        folded.bias.copy_(bn.bias - bn.running_mean * scale)
    return folded.requires_grad_(False)


# ---- the encoder -----------------------------------------------------------------------------------


class FiLMEfficientNet(nn.Module):
    """Normalised pixels (N, 3, S, S) + FiLM modulations -> feature map (N, 512, s, s)."""

    def __init__(self, config: GoogleRT1Config) -> None:
        super().__init__()
        self.activation_checkpointing = config.activation_checkpointing
        width, context = config.width_coefficient, config.text_embed_dim
        self.padding = config.stride2_padding
        google = config.preprocessing == "google"
        self.normalization = ImageNormalization() if google else ConstantNormalization()
        stem = round_filters(32, width)
        self.stem_conv = nn.Conv2d(3, stem, 3, stride=2, bias=False)
        self.stem_bn = BatchNorm(stem)
        self.blocks = nn.ModuleList(FiLMBlock(spec, context) for spec in block_specs(config))
        last = self.blocks[-1].mbconv.spec.filters_out
        top = round_filters(1280, width)
        self.top_conv = nn.Conv2d(last, top, 1, bias=False)
        self.top_bn = BatchNorm(top)
        self.conv1x1 = nn.Conv2d(top, IMAGE_TOKEN_WIDTH, 1, bias=False)
        self.film = FiLM(context, IMAGE_TOKEN_WIDTH)

    def fold_batch_norms(self) -> None:
        """Fold every BatchNorm into the convolution before it, in place (eval only: the folded values are a
        snapshot of the running statistics). Same function up to float rounding."""
        pairs = [(self, "stem_conv", "stem_bn"), (self, "top_conv", "top_bn")]
        for block in self.blocks:
            m = block.mbconv
            pairs += [(m, "dwconv", "bn"), (m, "project_conv", "project_bn")]
            if m.spec.expand_ratio != 1:
                pairs.append((m, "expand_conv", "expand_bn"))
        for owner, conv, bn in pairs:
            setattr(owner, conv, fold_batch_norm(getattr(owner, conv), getattr(owner, bn)))
            setattr(owner, bn, nn.Identity())

    @property
    def films(self) -> list[FiLM]:
        """Every FiLM layer in the order the modulations are applied (26 blocks, then the projection)."""
        return [block.film for block in self.blocks] + [self.film]

    def forward(self, pixels: Tensor, modulations: tuple[Tensor, ...]) -> Tensor:
        """pixels (N, 3, S, S) in [0, 1], modulations (one (N, 2C) per FiLM layer) -> (N, 512, s, s)"""
        pad = pad_for_stride_2 if self.padding == "tf_asymmetric" else pad_same_stride_2
        x = pad(self.normalization(pixels), 3)
        x = F.silu(self.stem_bn(self.stem_conv(x)))
        for block, modulation in zip(self.blocks, modulations[:-1], strict=True):
            if self.activation_checkpointing:
                x = checkpointed(block, x, modulation)
            else:
                x = block(x, modulation)
        x = F.silu(self.top_bn(self.top_conv(x)))
        return film(self.conv1x1(x), modulations[-1])
