"""RT-1-X's released JAX checkpoint (the Open X-Embodiment release, Flax msgpack) -> GoogleRT1's state_dict.

    is_rtx_checkpoint(path)                  whether `path` is a Flax/Orbax checkpoint (file or directory)
    state_dict_and_config_from_rtx(path)     -> (GoogleRT1Config, state_dict, ignored top-level entries)
    python -m rt1.model.google.rtx_checkpoint --checkpoint PATH --out OUT.pt   (a quick look / a state_dict)

The release (README "RT-1-X jax checkpoint": gs://gdm-robotics-open-x-embodiment/open_x_embodiment_and_rt_x_oss/
rt_1_x_jax) is loaded there by `flax.training.checkpoints.restore_checkpoint(path, None)`
(rt1_inference_example.py L64-68), which takes a file (a Flax msgpack map), a directory holding a file
named `checkpoint` (Orbax of early 2024 wrote the whole tree inline there) or `checkpoint_<N>` entries (the
latest is read). The format (flax/serialization.py): nested string-keyed maps; an array is msgpack ext type 1
holding msgpack (shape, dtype name, C-order bytes); a numpy scalar ext type 3; an array over 1 GiB a map
with `__msgpack_chunked_array__`. msgpack and numpy read it, no JAX. A newer Orbax OCDBT directory
(manifest.ocdbt, d/) is refused in one line saying so.

The tree is `{'params': {'Transformer_0', 'image_tokenizer'}, 'batch_stats': {'image_tokenizer'}}`
(../shared/reference/rtx_jax/param_tree_rtx_T15.txt); other top-level entries (a step, an optimizer state)
are returned as ignored. The configuration is read from the shapes (EfficientNet width and depth
coefficients, TokenLearner tokens, frames, layers, heads, head width, bins) on top of `GoogleRT1Config.rtx()`;
every parameter and BatchNorm statistic is used exactly once and every tensor of the model is filled, or a
one-line `RTXCheckpointError` names what does not fit.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import msgpack
import numpy as np
import torch
from torch import Tensor

from rt1.errors import RT1Error, run_cli
from rt1.google_config import IMAGE_TOKEN_WIDTH, GoogleRT1Config
from rt1.model.google.efficientnet import block_specs, round_filters

OCDBT_MARKERS = ("manifest.ocdbt", "_METADATA", "_CHECKPOINT_METADATA", "d", "ocdbt.process_0")
MSGPACK_MAP_BYTES = {*range(0x80, 0x90), 0xDE, 0xDF}
WIDTHS = (1.2, 1.0, 1.1, 1.4, 1.6, 1.8, 2.0, 0.1, 0.25, 0.5) + tuple(k / 20 for k in range(1, 61))
DEPTHS = (1.4, 1.0, 1.2, 1.8, 2.2, 2.6, 3.1, 0.5) + tuple(k / 10 for k in range(1, 41))


class RTXCheckpointError(RT1Error, ValueError):
    """The RT-1-X checkpoint cannot be read or does not fit GoogleRT1 (one line, naming the entry)."""


# ---- reading the file ------------------------------------------------------------------------------


def _is_msgpack_map(path: Path) -> bool:
    with open(path, "rb") as f:
        first = f.read(1)
    return bool(first) and first[0] in MSGPACK_MAP_BYTES


def checkpoint_file(path: Path) -> Path:
    """The msgpack file of a checkpoint path, as flax's restore_checkpoint finds it."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise RTXCheckpointError(f"{path}: no such file or directory")
    if (path / "checkpoint").is_file():
        return path / "checkpoint"
    steps = [p for p in path.glob("checkpoint_*") if re.fullmatch(r"checkpoint_\d+", p.name)]
    if steps:
        return checkpoint_file(max(steps, key=lambda p: int(p.name.split("_")[1])))
    found = sorted(p.name for p in path.iterdir() if p.name in OCDBT_MARKERS)
    if found:
        raise RTXCheckpointError(
            f"{path} is an Orbax OCDBT checkpoint ({', '.join(found)}), not the Flax msgpack `checkpoint` file "
            "this reader takes: write it as one with flax.training.checkpoints.restore_checkpoint and "
            "flax.serialization.to_bytes in a JAX environment (docs/training.md, RT-1-X)"
        )
    raise RTXCheckpointError(
        f"{path}: no `checkpoint` file or checkpoint_<N> entry (a Flax checkpoint directory)"
    )


def is_rtx_checkpoint(path) -> bool:
    """Whether `path` is a Flax (msgpack) or Orbax checkpoint, a file or directory (not TF's `checkpoint` text)."""
    path = Path(path)
    if path.is_dir() and any((path / name).exists() for name in OCDBT_MARKERS):
        return True
    try:
        return _is_msgpack_map(checkpoint_file(path))
    except (RTXCheckpointError, OSError):
        return False


def _array(data: bytes) -> Tensor:
    shape, dtype_name, buffer = msgpack.unpackb(data, raw=True)
    name = dtype_name.decode()
    if name == "bfloat16":
        return torch.frombuffer(bytearray(buffer), dtype=torch.bfloat16).reshape(shape).float()
    return torch.from_numpy(np.frombuffer(buffer, dtype=np.dtype(name)).reshape(shape).copy())


def _ext_hook(code: int, data: bytes):
    if code == 1:
        return _array(data)
    if code == 3:
        return _array(data).reshape(())
    if code == 2:
        real, imag = msgpack.unpackb(data)
        return complex(real, imag)
    raise RTXCheckpointError(f"unknown msgpack extension type {code} (not a Flax checkpoint?)")


def _unchunk(tree):
    if isinstance(tree, dict):
        if tree.get("__msgpack_chunked_array__"):
            chunks = tree["chunks"]
            flat = torch.cat([chunks[str(i)].flatten() for i in range(len(chunks))])
            return flat.reshape(tuple(tree["shape"]))
        return {k: _unchunk(v) for k, v in tree.items()}
    if isinstance(tree, str) and tree.startswith("PLACEHOLDER://"):
        raise RTXCheckpointError(
            f"the checkpoint holds {tree!r} instead of an array: Orbax stored the arrays in separate "
            "tensorstore directories; restore it with flax in a JAX environment and write it with to_bytes"
        )
    return tree


def read_tree(path) -> dict:
    """The checkpoint's tree: nested dicts of tensors (and whatever else it holds)."""
    file = checkpoint_file(Path(path))
    if not _is_msgpack_map(file):
        raise RTXCheckpointError(
            f"{file} is not a Flax msgpack checkpoint (its first byte is not a msgpack map)"
        )
    try:
        tree = msgpack.unpackb(file.read_bytes(), ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise RTXCheckpointError(f"{file}: cannot read as msgpack: {exc}") from None
    return _unchunk(tree)


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        out.update(flatten(value, name) if isinstance(value, dict) else {name: value})
    return out


# ---- the configuration from the shapes -------------------------------------------------------------

EN = "params/image_tokenizer/EfficientNetWithFilm_0"
TR = "params/Transformer_0"
TL = "params/image_tokenizer/TokenLearnerModuleV11_0"


def _shape(flat: dict, key: str) -> tuple[int, ...]:
    if key not in flat or not isinstance(flat[key], Tensor):
        raise RTXCheckpointError(f"the checkpoint has no array {key} (not RT-1-X's parameter tree)")
    return tuple(flat[key].shape)


def _count(flat: dict, pattern: str) -> int:
    return len({m.group(1) for k in flat if (m := re.match(pattern, k))})


def _encoder_coefficients(flat: dict) -> tuple[float, float]:
    """EfficientNet (width, depth) coefficients whose blocks have exactly the checkpoint's shapes."""
    blocks = _count(flat, EN + r"/MBConvBlock_(\d+)/")
    wanted = [_shape(flat, f"{EN}/MBConvBlock_{i}/depthwise_conv2d/depthwise_kernel") for i in range(blocks)]
    wanted += [_shape(flat, f"{EN}/MBConvBlock_{i}/project_conv2d_0/kernel") for i in range(blocks)]
    wanted += [_shape(flat, f"{EN}/Stem_0/conv2d/kernel"), _shape(flat, f"{EN}/Head_0/conv2d/kernel")]
    for width in WIDTHS:
        for depth in DEPTHS:
            specs = block_specs(GoogleRT1Config(width_coefficient=width, depth_coefficient=depth))
            if len(specs) != blocks:
                continue
            hidden = [s.filters_in * s.expand_ratio for s in specs]
            shapes = [(s.kernel, s.kernel, h, 1) for s, h in zip(specs, hidden, strict=True)]
            shapes += [(1, 1, h, s.filters_out) for s, h in zip(specs, hidden, strict=True)]
            shapes += [
                (3, 3, 3, specs[0].filters_in),
                (1, 1, specs[-1].filters_out, round_filters(1280, width)),
            ]
            if shapes == wanted:
                return width, depth
    raise RTXCheckpointError(
        f"the EfficientNet of the checkpoint ({blocks} MBConv blocks, stem {wanted[-2]}) is no width/depth "
        "coefficient pair of EfficientNet-B0's block table"
    )


def infer_config(flat: dict, **overrides) -> GoogleRT1Config:
    """RT-1-X's configuration with the sizes of the checkpoint's arrays (`overrides`: e.g. the frame size)."""
    d_in, d = _shape(flat, f"{TR}/Dense_0/kernel")
    if d_in != IMAGE_TOKEN_WIDTH:
        raise RTXCheckpointError(
            f"{TR}/Dense_0/kernel is {(d_in, d)}: image tokens must be {IMAGE_TOKEN_WIDTH} wide"
        )
    tokens = _shape(flat, f"{TL}/token_masking/Dense_1/kernel")[1]
    positions = _shape(flat, f"{TR}/Dense_1/kernel")[0]
    per_step = tokens + 11
    if positions % per_step:
        raise RTXCheckpointError(
            f"{positions} positions are not whole steps of {tokens} image + 11 action tokens"
        )
    layers = _count(flat, TR + r"/TransformerBlock_(\d+)/")
    _, heads, key_dim = _shape(flat, f"{TR}/TransformerBlock_0/MultiHeadDotProductAttention_0/query/kernel")
    if f"{TR}/TransformerBlock_0/Dense_2/kernel" not in flat:
        raise RTXCheckpointError(
            "the feed-forward is not RT-1-X's SwiGLU (TransformerBlock_0 has no Dense_2)"
        )
    hidden = _shape(flat, f"{TR}/TransformerBlock_0/Dense_0/kernel")[1]
    if hidden != d:
        raise RTXCheckpointError(
            f"SwiGLU hidden width {hidden} differs from the model width {d} (RT-1-X: 512 and 512)"
        )
    if any(k.startswith("params/Dense_") for k in flat):
        raise RTXCheckpointError(
            "the checkpoint embeds previous actions (include_prev_timesteps_actions=True)"
        )
    width, depth = _encoder_coefficients(flat)
    fields = dict(
        width_coefficient=width,
        depth_coefficient=depth,
        num_learned_tokens=tokens,
        num_frames=positions // per_step,
        num_layers=layers,
        num_heads=heads,
        key_dim=key_dim,
        model_dim=d,
        num_bins=_shape(flat, f"{TR}/Dense_2/kernel")[1],
    )
    return GoogleRT1Config.rtx(**{**fields, **overrides})


# ---- the parameter mapping -------------------------------------------------------------------------


def _conv(k: Tensor) -> Tensor:
    return k.permute(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)


def _depthwise(k: Tensor) -> Tensor:
    return k.permute(2, 3, 0, 1)  # (kh, kw, C, 1) -> (C, 1, kh, kw)


def _heads_in(k: Tensor) -> Tensor:
    return k.reshape(k.shape[0], -1).t()  # (d, heads, key_dim) -> (heads * key_dim, d)


def _heads_out(k: Tensor) -> Tensor:
    return k.reshape(-1, k.shape[-1]).t()  # (heads, key_dim, d) -> (d, heads * key_dim)


def layout(config: GoogleRT1Config) -> dict[str, tuple[str, object]]:
    """GoogleRT1 state_dict key -> (checkpoint path, transform) for RT-1-X's tree (transform None: as is)."""
    out = _Layout()
    _encoder_layout(out, config)
    norm, dense = out.norm, out.dense
    norm("token_learner.norm", f"{TL}/LayerNorm_0", stats=False)
    dense("token_learner.hidden", f"{TL}/token_masking/Dense_0")
    dense("token_learner.output", f"{TL}/token_masking/Dense_1")
    dense("decoder.token_embedding", f"{TR}/Dense_0")
    dense("decoder.position_embedding", f"{TR}/Dense_1")
    dense("decoder.to_logits", f"{TR}/Dense_2")
    for i in range(config.num_layers):
        ours, theirs = f"decoder.layers.{i}", f"{TR}/TransformerBlock_{i}"
        norm(f"{ours}.norm1", f"{theirs}/LayerNorm_0", stats=False)
        norm(f"{ours}.norm2", f"{theirs}/LayerNorm_1", stats=False)
        attention = f"{theirs}/MultiHeadDotProductAttention_0"
        for name in ("query", "key", "value"):
            out[f"{ours}.attention.{name}.weight"] = (f"{attention}/{name}/kernel", _heads_in)
            out[f"{ours}.attention.{name}.bias"] = (f"{attention}/{name}/bias", torch.flatten)
        out[f"{ours}.attention.output.weight"] = (f"{attention}/out/kernel", _heads_out)
        out[f"{ours}.attention.output.bias"] = (f"{attention}/out/bias", None)
        for ours_ff, theirs_ff in (("w1", "Dense_0"), ("w3", "Dense_1"), ("w2", "Dense_2")):  # rt1.py L57-60
            dense(f"{ours}.ff.{ours_ff}", f"{theirs}/{theirs_ff}", bias=False)
    return dict(out)


def _encoder_layout(out: _Layout, config: GoogleRT1Config) -> None:
    """The FiLM-EfficientNet's entries, and the 1x1 convolution and FiLM after it."""
    conv, norm, film = out.conv, out.norm, out.film
    conv("encoder.stem_conv", f"{EN}/Stem_0/conv2d")
    norm("encoder.stem_bn", f"{EN}/Stem_0/batch_normalization")
    for i, spec in enumerate(block_specs(config)):
        ours, theirs, bn = f"encoder.blocks.{i}.mbconv", f"{EN}/MBConvBlock_{i}", 0
        if spec.expand_ratio != 1:
            conv(f"{ours}.expand_conv", f"{theirs}/expand_conv2d_0")
            norm(f"{ours}.expand_bn", f"{theirs}/batch_normalization_0")
            bn = 1
        conv(f"{ours}.dwconv", f"{theirs}/depthwise_conv2d", _depthwise)
        norm(f"{ours}.bn", f"{theirs}/batch_normalization_{bn}")
        conv(f"{ours}.se_reduce", f"{theirs}/SqueezeExcite_0/reduce_conv2d_0", bias=True)
        conv(f"{ours}.se_expand", f"{theirs}/SqueezeExcite_0/expand_conv2d_0", bias=True)
        conv(f"{ours}.project_conv", f"{theirs}/project_conv2d_0")
        norm(f"{ours}.project_bn", f"{theirs}/batch_normalization_{bn + 1}")
        film(f"encoder.blocks.{i}.film", f"{EN}/FilmConditioning_{i}")
    conv("encoder.top_conv", f"{EN}/Head_0/conv2d")
    norm("encoder.top_bn", f"{EN}/Head_0/batch_normalization")
    conv("encoder.conv1x1", "params/image_tokenizer/Conv_0")
    film("encoder.film", "params/image_tokenizer/FilmConditioning_0")


class _Layout(dict):
    """state_dict key -> (checkpoint path, transform), filled one Flax module at a time."""

    def dense(self, ours: str, theirs: str, bias: bool = True) -> None:
        self[f"{ours}.weight"] = (f"{theirs}/kernel", torch.t)
        if bias:
            self[f"{ours}.bias"] = (f"{theirs}/bias", None)

    def conv(self, ours: str, theirs: str, transform=_conv, bias: bool = False) -> None:
        kernel = "/depthwise_kernel" if transform is _depthwise else "/kernel"
        self[f"{ours}.weight"] = (theirs + kernel, transform)
        if bias:
            self[f"{ours}.bias"] = (f"{theirs}/bias", None)

    def norm(self, ours: str, theirs: str, stats: bool = True) -> None:
        self[f"{ours}.weight"], self[f"{ours}.bias"] = (f"{theirs}/scale", None), (f"{theirs}/bias", None)
        if stats:
            batch = theirs.replace("params/", "batch_stats/", 1)
            self[f"{ours}.running_mean"] = (f"{batch}/mean", None)
            self[f"{ours}.running_var"] = (f"{batch}/var", None)

    def film(self, ours: str, theirs: str) -> None:
        self.dense(
            f"{ours}.add", f"{theirs}/Dense_0"
        )  # film_conditioning.py: Dense_0 adds, Dense_1 multiplies
        self.dense(f"{ours}.mult", f"{theirs}/Dense_1")


def _model_shapes(config: GoogleRT1Config) -> dict[str, tuple[int, ...]]:
    from rt1.model.google.network import GoogleRT1

    with torch.device("meta"):
        model = GoogleRT1(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def state_dict_and_config_from_rtx(path, **overrides) -> tuple[GoogleRT1Config, dict[str, Tensor], list[str]]:
    """The RT-1-X checkpoint at `path` (file or directory) -> (config, GoogleRT1 state_dict, ignored entries).

    `overrides` are GoogleRT1Config fields that the weights do not fix (image_height, image_width, dropout,
    ...). Ignored entries are the top-level entries other than params and batch_stats (e.g. 'step').
    """
    tree = read_tree(path)
    if not isinstance(tree, dict) or "params" not in tree:
        raise RTXCheckpointError(
            f"{path}: no 'params' entry at the top of the checkpoint (not a Flax train state)"
        )
    ignored = sorted(str(k) for k in tree if k not in ("params", "batch_stats"))
    flat = flatten({k: tree[k] for k in ("params", "batch_stats") if k in tree})
    config = infer_config(flat, **overrides)
    shapes = _model_shapes(config)
    mapping = layout(config)
    if set(mapping) != set(shapes):
        few = sorted(set(mapping) ^ set(shapes))[:4]
        raise RTXCheckpointError(f"internal: the RT-1-X layout and GoogleRT1 differ at {few}")
    state_dict, used = {}, set()
    for key, (theirs, transform) in mapping.items():
        if theirs not in flat or not isinstance(flat[theirs], Tensor):
            raise RTXCheckpointError(f"the checkpoint has no array {theirs} (for {key})")
        value = flat[theirs].float()
        value = transform(value) if transform is not None else value
        if tuple(value.shape) != shapes[key]:
            raise RTXCheckpointError(
                f"{theirs} has shape {tuple(flat[theirs].shape)}, which gives {tuple(value.shape)} for {key}; "
                f"the inferred configuration needs {shapes[key]}"
            )
        state_dict[key] = value.contiguous()
        used.add(theirs)
    unused = sorted(set(flat) - used)
    if unused:
        raise RTXCheckpointError(
            f"{len(unused)} checkpoint entries have no place in RT-1-X, e.g. {unused[:3]}"
        )
    return config, state_dict, ignored


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rt1.model.google.rtx_checkpoint",
        description="Read RT-1-X's JAX checkpoint (Flax msgpack) into GoogleRT1's state_dict and config.",
    )
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="the `checkpoint` file or its directory"
    )
    parser.add_argument(
        "--out", type=Path, help="write {'model_config', 'state_dict', 'ignored'} with torch.save"
    )
    args = parser.parse_args(argv)
    config, state_dict, ignored = state_dict_and_config_from_rtx(args.checkpoint)
    values = sum(v.numel() for v in state_dict.values())
    print(f"RT-1-X: {len(state_dict)} tensors, {values:,} values; ignored entries: {ignored or 'none'}")
    print(f"config: {config.to_dict()}")
    if args.out:
        torch.save({"model_config": config.to_dict(), "state_dict": state_dict, "ignored": ignored}, args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
