"""MaxViT image encoder with FiLM text conditioning (Tu et al. 2022, as used by RT-1).

    images (N, 3, H, W) --conv stem (stride 2)--> (N, H/2, W/2, stem)
    for every stage s (width dim * 2**s) and every block in it:
        FiLM(text) -> MBConv (stride 2 in a stage's first block) -> block attention + FF
                   -> grid attention + FF
    --> feature map (N, H / 2**(stages+1), W / 2**(stages+1), embed_dim), channels last

Feature maps are kept channels-last (N, H, W, C) between blocks: attention, feed-forward and the
1x1 convolutions of MBConv (Linear layers) work on the last dimension, and its depthwise convolution
and BatchNorms see the same memory as a channels_last NCHW tensor (a free permute, no copy). FiLM
is applied at the input of every MaxViT block. With config.attention_memory_kv > 0 (the original's
model) every attention also attends to that many learned memory key/value pairs. Speed-ups that keep the math (measured on CPU):
MBConv's expansion BatchNorm is folded into the expansion matmul (`linear_batch_norm`), no conv
biases before BatchNorms, dropout masks drawn cheaply and fused with the residual add.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from rt1.config import RT1Config
from rt1.model.checkpointing import checkpointed
from rt1.model.dropout import dropout, residual_dropout
from rt1.model.film import FiLM, modulate

# ---- helpers ---------------------------------------------------------------------------------------


def block_partition(x: Tensor, w: int) -> Tensor:
    """'b (x w1) (y w2) d -> (b x y) (w1 w2) d': non-overlapping w x w windows of neighbours."""
    b, h, wd, d = x.shape
    x = x.view(b, h // w, w, wd // w, w, d).transpose(2, 3)
    return x.reshape(-1, w * w, d)


def block_unpartition(x: Tensor, w: int, h: int, wd: int) -> Tensor:
    """'(b x y) (w1 w2) d -> b (x w1) (y w2) d'"""
    d = x.shape[-1]
    x = x.view(-1, h // w, wd // w, w, w, d).transpose(2, 3)
    return x.reshape(-1, h, wd, d)


def grid_partition(x: Tensor, w: int) -> Tensor:
    """'b (w1 x) (w2 y) d -> (b x y) (w1 w2) d': w x w windows of pixels spread over the whole map."""
    b, h, wd, d = x.shape
    x = x.view(b, w, h // w, w, wd // w, d).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(-1, w * w, d)


def grid_unpartition(x: Tensor, w: int, h: int, wd: int) -> Tensor:
    """'(b x y) (w1 w2) d -> b (w1 x) (w2 y) d'"""
    d = x.shape[-1]
    x = x.view(-1, h // w, wd // w, w, w, d).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(-1, h, wd, d)


def relative_position_index(w: int) -> Tensor:
    """(w*w, w*w) index into a ((2w-1)**2)-entry table of relative 2-D offsets inside a window."""
    pos = torch.arange(w)
    grid = torch.stack(torch.meshgrid(pos, pos, indexing="ij")).flatten(1)  # (2, w*w)
    rel = grid[:, :, None] - grid[:, None, :] + (w - 1)  # (2, w*w, w*w), each in [0, 2w-2]
    return rel[0] * (2 * w - 1) + rel[1]


class _AllReduceSum(torch.autograd.Function):
    """all_reduce(SUM) over `group` with its gradient: each rank's input gradient is the sum of every rank's
    output gradient (what torch.distributed.nn.all_reduce does; that module is deprecated)."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        ctx.group = group
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def _sync_group(bn: nn.BatchNorm2d):
    """The process group whose batch a SyncBatchNorm normalises over, or None to use this process's batch
    (a plain BatchNorm, or SyncBatchNorm outside a multi-process run: what nn.SyncBatchNorm itself does)."""
    if not (isinstance(bn, nn.SyncBatchNorm) and dist.is_available() and dist.is_initialized()):
        return None
    group = bn.process_group or dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


def _sync_moments(
    mean: Tensor, var: Tensor, rows: int, shift: Tensor, group
) -> tuple[Tensor, Tensor, Tensor]:
    """This rank's batch mean and biased variance (C,) of `rows` rows -> those of the batch of all ranks.

    One all_reduce of 2C + 1 float32 values, [R (m - c), R (v + (m - c)^2), R], the moments about a shift c
    every rank shares (the running mean), so E[(x - c)^2] - (M - c)^2 does not cancel once c tracks M.
    The collective is differentiable (`_AllReduceSum`): its backward sums the statistics' gradients
    over the ranks, as SyncBatchNorm's backward does. rows comes back as a 0-dim tensor (no host sync).
    """
    with torch.autocast(mean.device.type, enabled=False):
        dtype = torch.float64 if mean.dtype == torch.float64 else torch.float32
        offset = mean.to(dtype) - shift.detach().to(dtype)
        stats = torch.cat(
            [offset * rows, (var.to(dtype) + offset * offset) * rows, offset.new_full((1,), float(rows))]
        )
        stats = _AllReduceSum.apply(stats, group)
        c, total = mean.shape[0], stats[-1].detach()
        offset_all = stats[:c] / total
        var_all = (stats[c:-1] / total - offset_all * offset_all).clamp(min=0.0)
    return (offset_all + shift.detach().to(dtype)).to(mean.dtype), var_all.to(var.dtype), total


def linear_batch_norm(x: Tensor, weight: Tensor, bn: nn.BatchNorm2d) -> Tensor:
    """bn(x @ weight.T) for a channels-last x (..., C_in) -> (..., C_out), as one matmul.

    BatchNorm after a linear map can be folded into it, also in training: the batch mean and
    (biased) variance of the C_out outputs follow from the mean and covariance of the C_in inputs,
        mean = W mean_x,    var = diag(W cov_x W^T),
    and then bn(x W^T) = x (W * s)^T + (beta - mean * s) with s = gamma / sqrt(var + eps).
    Same outputs, gradients (the statistics stay differentiable functions of x and W) and running
    statistics update as the two-step version, without BatchNorm's passes over the wide output
    (MBConv's expansion has C_out = 4-8 x C_in). A SyncBatchNorm (the multi-GPU default) takes the same
    path, its per-rank output moments combined over its process group (`_sync_moments`).
    """
    if not bn.track_running_stats:
        return _batch_norm_nhwc(bn, x @ weight.t())
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    if bn.training:
        group = _sync_group(bn)
        if group is None and x2.shape[0] < 2:
            raise ValueError("BatchNorm in training mode needs more than one value per channel")
        rows = x2.shape[0]
        mean_x = x2.sum(dim=0) / rows  # = mean; sum's backward is a broadcast view, mean's a full-size copy
        centered = x2 - mean_x
        cov = centered.t() @ centered / rows
        mean = weight @ mean_x
        var = ((weight @ cov) * weight).sum(dim=1).clamp(min=0.0)
        if group is not None:  # the C_out output moments travel, not the C_in x C_in covariance
            mean, var, rows = _sync_moments(mean, var, rows, bn.running_mean, group)
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            # under autocast the batch statistics are bf16/fp16; the running ones stay float32
            bn.running_mean.lerp_(mean.detach().to(bn.running_mean.dtype), momentum)
            bn.running_var.lerp_((var.detach() * (rows / (rows - 1))).to(bn.running_var.dtype), momentum)
    else:
        mean, var = bn.running_mean, bn.running_var
    scale = bn.weight * torch.rsqrt(var + bn.eps)
    out = torch.addmm(bn.bias - mean * scale, x2, (weight * scale[:, None]).t())
    return out.view(*shape[:-1], out.shape[-1])


def _batch_norm_nhwc(bn: nn.BatchNorm2d, x: Tensor) -> Tensor:
    """Apply a BatchNorm2d to an (N, H, W, C) tensor through its channels_last NCHW view.

    The module still sees NCHW input, so nn.SyncBatchNorm.convert_sync_batchnorm keeps working.
    """
    return bn(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


# ---- leaf modules ----------------------------------------------------------------------------------


class SqueezeExcitation(nn.Module):
    """Channel gate from the spatial mean: x (N, H, W, C) -> x * sigmoid(MLP(mean_hw x))."""

    def __init__(self, dim: int, shrinkage: float) -> None:
        super().__init__()
        hidden = int(dim * shrinkage)
        self.gate = nn.Sequential(
            nn.Linear(dim, hidden, bias=False), nn.SiLU(), nn.Linear(hidden, dim, bias=False), nn.Sigmoid()
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x.mean(dim=(1, 2)))[:, None, None, :]


def gated_linear(x: Tensor, gate: Tensor, weight: Tensor) -> Tensor:
    """(x * gate[:, None, None, :]) @ weight.T for x (N, H, W, C_in), gate (N, C_in) -> (N, H, W, C_out).

    The gate scales the weight of each sample instead of its whole feature map: one batched matmul,
    no gated copy of x in the forward pass and no elementwise gradient passes over it in the backward
    (squeeze-excitation then 1x1 projection, as MBConv does). On an accelerator, where the late stages'
    per-sample weights (N, C_in, C_out) would be larger than the gated map (N, H*W, C_in) they replace,
    the map is gated instead (the CPU, where the batched matmul was measured faster, always takes it).
    """
    n, h, w, c = x.shape
    if x.device.type != "cpu" and h * w < weight.shape[0]:
        return (x * gate[:, None, None, :]) @ weight.t()
    per_sample = weight.t()[None] * gate[:, :, None]  # (N, C_in, C_out)
    return torch.bmm(x.reshape(n, h * w, c), per_sample).view(n, h, w, -1)


class MBConv(nn.Module):
    """Inverted bottleneck: 1x1 expand -> 3x3 depthwise (stride 2 to downsample) -> SE -> 1x1 project.

    x (N, H, W, dim_in) channels-last -> (N, H', W', dim_out); residual when the shape is kept.
    BatchNorm + GELU after the expansion and the depthwise convolution, BatchNorm after the
    projection. The 1x1 convolutions are Linear layers on the channels-last tensor (one matmul);
    they and the depthwise convolution have no bias, as each feeds a BatchNorm that removes it.
    """

    def __init__(self, dim_in: int, dim_out: int, downsample: bool, expansion: int, shrinkage: float) -> None:
        super().__init__()
        hidden = expansion * dim_out
        self.residual = dim_in == dim_out and not downsample
        self.expand = nn.Linear(dim_in, hidden, bias=False)
        self.expand_norm = nn.BatchNorm2d(hidden)
        self.depthwise = nn.Conv2d(
            hidden, hidden, 3, stride=2 if downsample else 1, padding=1, groups=hidden, bias=False
        )
        self.depthwise_norm = nn.BatchNorm2d(hidden)
        self.squeeze_excitation = SqueezeExcitation(hidden, shrinkage)
        self.project = nn.Linear(hidden, dim_out, bias=False)
        self.project_norm = nn.BatchNorm2d(dim_out)

    def forward(self, x: Tensor) -> Tensor:
        h = F.gelu(linear_batch_norm(x, self.expand.weight, self.expand_norm))  # = expand_norm(expand(x))
        # A contiguous NHWC tensor permuted to NCHW is a channels_last tensor: no copies.
        h = self.depthwise(h.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        h = F.gelu(_batch_norm_nhwc(self.depthwise_norm, h))
        # the spatial mean as sum / count (the same numbers): the gradient of a sum is a broadcast view that
        # autograd adds in place, the gradient of a mean a materialised full-size division
        gate = self.squeeze_excitation.gate(h.sum(dim=(1, 2)) / (h.shape[1] * h.shape[2]))  # (N, hidden)
        h = _batch_norm_nhwc(
            self.project_norm, gated_linear(h, gate, self.project.weight)
        )  # = project(SE(h))
        return h + x if self.residual else h


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative position bias.

    x (num_windows, w*w, dim) -> (num_windows, w*w, dim). Pre-norm; dropout on the attention
    probabilities here, the caller adds the residual (with dropout, `residual_dropout`).

    memory_kv > 0 (the original's model): `mem_kv` (2, heads, memory_kv, dim_head) holds learned
    key/value pairs shared by every window, prepended to each window's keys and values (raw
    parameters: no norm, no projection); their relative position bias is 0. Keys = memory_kv + w*w.
    """

    def __init__(self, dim: int, dim_head: int, window_size: int, dropout: float, memory_kv: int = 0) -> None:
        super().__init__()
        self.heads = dim // dim_head
        self.dim_head = dim_head
        self.dropout = dropout
        self.norm = nn.LayerNorm(dim, bias=False)
        self.to_qkv = nn.Linear(dim, dim * 3, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)
        self.rel_pos_bias = nn.Embedding((2 * window_size - 1) ** 2, self.heads)
        self.register_buffer("rel_pos_index", relative_position_index(window_size), persistent=False)
        self.memory_kv = memory_kv
        if memory_kv > 0:
            self.mem_kv = nn.Parameter(torch.randn(2, self.heads, memory_kv, dim_head))
        self.fixed_bias: Tensor | None = None  # position_bias() precomputed by rt1.model.inference

    def position_bias(self) -> Tensor:
        """(heads, t, M + t) attention bias: the relative position bias, 0 on the M memory columns."""
        bias = self.rel_pos_bias(self.rel_pos_index).permute(2, 0, 1)  # (heads, t, t)
        return F.pad(bias, (self.memory_kv, 0)) if self.memory_kv > 0 else bias

    def forward(self, x: Tensor) -> Tensor:
        n, t, _ = x.shape
        qkv = self.to_qkv(self.norm(x)).view(n, t, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(
            0
        )  # (n, heads, t, dim_head) each; unbind's backward is one stack, not 3 scatters
        if self.memory_kv > 0:
            mem_k, mem_v = self.mem_kv.to(x.dtype).unbind(0)  # (heads, M, dim_head) each
            k = torch.cat((mem_k.expand(n, -1, -1, -1), k), dim=2)  # (n, heads, M + t, dim_head)
            v = torch.cat((mem_v.expand(n, -1, -1, -1), v), dim=2)
        bias = (self.position_bias() if self.fixed_bias is None else self.fixed_bias).to(x.dtype)
        p = self.dropout if self.training else 0.0
        if p > 0.0 and x.device.type == "cpu":
            # What SDPA computes, written out: with dropout its CPU kernels fall back to a generic path
            # (bernoulli masks, -inf row checks) that costs more than these five ops. Accelerators use SDPA.
            scores = torch.add(bias, torch.matmul(q, k.transpose(-1, -2)), alpha=self.dim_head**-0.5)
            probs = dropout(scores.softmax(dim=-1), p, True)
            out = torch.matmul(probs, v)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias, dropout_p=p
            )  # (n, heads, t, dim_head)
        return self.to_out(out.transpose(1, 2).reshape(n, t, -1))


class FeedForward(nn.Module):
    """Pre-norm MLP with dropout on the hidden layer: x (..., dim) -> (..., dim), no residual."""

    def __init__(self, dim: int, mult: int, dropout: float) -> None:
        super().__init__()
        self.dropout = dropout
        self.norm = nn.LayerNorm(dim, bias=False)
        self.fc1 = nn.Linear(dim, dim * mult)
        self.fc2 = nn.Linear(dim * mult, dim)

    def forward(self, x: Tensor) -> Tensor:
        # GELU's backward needs its input, not its output: the dropout can scale the output in place.
        return self.fc2(dropout(F.gelu(self.fc1(self.norm(x))), self.dropout, self.training, inplace=True))


class MaxViTBlock(nn.Module):
    """FiLM -> MBConv -> block attention + FF -> grid attention + FF (each residual, output dropout).

    x (N, H, W, dim_in) channels-last, modulation (N, 2 * dim_in) from self.film
      -> (N, H', W', dim) (H' = H/2 if downsample)
    """

    def __init__(self, config: RT1Config, dim_in: int, dim: int, downsample: bool) -> None:
        super().__init__()
        c = config
        self.window_size = c.attention_window
        self.dropout = c.dropout
        self.film = FiLM(c.cond_dim, dim_in, c.film_mult)
        self.mbconv = MBConv(dim_in, dim, downsample, c.mbconv_expansion, c.mbconv_shrinkage)
        self.block_attn = WindowAttention(
            dim, c.dim_head, c.attention_window, c.dropout, c.attention_memory_kv
        )
        self.block_ff = FeedForward(dim, c.ff_mult, c.dropout)
        self.grid_attn = WindowAttention(
            dim, c.dim_head, c.attention_window, c.dropout, c.attention_memory_kv
        )
        self.grid_ff = FeedForward(dim, c.ff_mult, c.dropout)

    def forward(self, x: Tensor, modulation: Tensor) -> Tensor:
        w, p, training = self.window_size, self.dropout, self.training
        x = self.mbconv(modulate(x, modulation))
        h, wd = x.shape[1:3]
        x = block_partition(x, w)  # (N * windows, w*w, dim)
        x = residual_dropout(x, self.block_attn(x), p, training)
        x = residual_dropout(x, self.block_ff(x), p, training)
        x = grid_partition(block_unpartition(x, w, h, wd), w)
        x = residual_dropout(x, self.grid_attn(x), p, training)
        x = residual_dropout(x, self.grid_ff(x), p, training)
        return grid_unpartition(x, w, h, wd)


# ---- top model -------------------------------------------------------------------------------------


class MaxViT(nn.Module):
    """images (N, C, H, W) float, modulations (one (N, 2 * width) per block) -> (N, h, w, embed_dim)."""

    def __init__(self, config: RT1Config) -> None:
        super().__init__()
        c = config
        self.conv_stem = nn.Sequential(
            nn.Conv2d(c.channels, c.conv_stem_dim, 3, stride=2, padding=1),
            nn.Conv2d(c.conv_stem_dim, c.conv_stem_dim, 3, padding=1),
        )
        blocks = []
        dim_in = c.conv_stem_dim
        for dim, depth in zip(c.stage_dims, c.depth):
            for i in range(depth):
                blocks.append(MaxViTBlock(c, dim_in, dim, downsample=i == 0))
                dim_in = dim
        self.blocks = nn.ModuleList(blocks)
        self.activation_checkpointing = c.activation_checkpointing

    def modulations(self, cond: Tensor) -> tuple[Tensor, ...]:
        """cond (N, cond_dim) -> the FiLM modulation of every block, (N, 2 * block input width) each."""
        return tuple(block.film(cond) for block in self.blocks)

    def forward(self, images: Tensor, modulations: tuple[Tensor, ...]) -> Tensor:
        x = self.conv_stem(images.contiguous(memory_format=torch.channels_last))
        x = x.permute(0, 2, 3, 1).contiguous()  # (N, H/2, W/2, stem), free when channels_last
        for block, modulation in zip(self.blocks, modulations, strict=True):
            x = checkpointed(block, x, modulation) if self.activation_checkpointing else block(x, modulation)
        return x
