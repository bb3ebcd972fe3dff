"""Convert a checkpoint of the original pipeline (robotic-transformer-pytorch 0.2.3's RT1) to this project's.

    python -m rt1.model.convert_original --checkpoint save/{model}_{describe}/model-{epoch}.pth --out DIR

The original saves `model.module.state_dict()` (reference key names). The output, DIR/{input stem}.pt,
is a checkpoint of this project (format "rt1-train-checkpoint": model, model_config, no optimizer)
of the `original` preset, whose model function is the reference's exactly, so
`rt1.model.load_model(path)` returns an RT1 that gives the reference's logits (float32
rounding). The sizes are read from the state_dict (text_embed_dim: 768 for the original's T5-base
embeddings; the MaxViT, TokenLearner and transformer widths and depths); what a state_dict does not
hold (image size, frames per window, dropout, action count) comes from the `original` preset or
the options. The model then needs text embeddings of that width, and raw 0..255 pixels
(`pixel_scaling="raw"`).

Mapping (reference -> this project; see tests/model/test_convert_original.py for the numerical check):

    vit.conv_stem.*                              -> vit.conv_stem.*
    vit.layers.i.0.[fn.]{0,3,7}.weight           -> vit.blocks.i.mbconv.{expand,depthwise,project}.weight
                                                    (1x1 convolutions become Linear weights)
    vit.layers.i.0.[fn.]{0,3,7}.bias             -> folded into the following BatchNorm:
                                                    BN(conv(x) + b) = BN'(conv(x)), running_mean' = running_mean - b
    vit.layers.i.0.[fn.]{1,4,8}.*                -> vit.blocks.i.mbconv.{expand,depthwise,project}_norm.*
    vit.layers.i.0.[fn.]6.gate.{1,3}.weight      -> vit.blocks.i.mbconv.squeeze_excitation.gate.{0,2}.weight
    vit.layers.i.{2,3,6,7}.fn.*                  -> vit.blocks.i.{block_attn,block_ff,grid_attn,grid_ff}.*
                                                    (norm.gamma -> norm.weight, to_out.0 -> to_out, net.0/net.3 ->
                                                    fc1/fc2, mem_kv and rel_pos_bias as they are)
    conditioner.null_text_embed                  -> conditioner.null_text_embed
    conditioner.text_embed_stem_mlp.0.*          -> conditioner.stem.0.*
    conditioner.conditioners.j.net.*             -> vit.blocks.j.film.net.* (j < number of MaxViT blocks nb),
                                                    then transformer.layers.l.s.film.net.*, (l, s) = divmod(j - nb, 2)
    token_learner.net.{0,2}.{weight,bias}        -> token_learner.fc1.{weight,bias}, token_learner.fc2_{weight,bias}
    transformer.layers.l.0.to_q / to_kv          -> transformer.layers.l.0.to_qkv (rows: q, then k, v)
    transformer.layers.l.*.norm.gamma, to_out.0, net.0, net.3 -> norm.weight, to_out, fc1, fc2
    to_logits.0.gamma, to_logits.1.*             -> to_logits.0.weight, to_logits.1.*
    dropped: every LayerNorm `.beta` (a zero buffer: checked), vit.mlp_head.* (the unused ImageNet head)

Errors are one line (exit status 2): a missing file, a file that is not a torch checkpoint, a
state_dict with keys the mapping does not know (a few are named) or whose shapes do not fit.
"""

from __future__ import annotations

import argparse
import pickle
import re
import sys
import zipfile
from pathlib import Path

import torch
from torch import Tensor

from rt1.config import PRESETS, RT1Config
from rt1.errors import RT1Error, run_cli

REFERENCE = "robotic-transformer-pytorch 0.2.3"


class ConversionError(RT1Error, ValueError):
    """The input cannot be converted (the message is one line and names the file or keys)."""


# ---- helpers ---------------------------------------------------------------------------------------

# Every reference key the mapping knows (after an optional DDP "module." prefix is stripped).
_KNOWN = [
    re.compile(p)
    for p in (
        r"vit\.conv_stem\.[01]\.(weight|bias)",
        r"vit\.layers\.\d+\.0\.(fn\.)?[013478]\.(weight|bias)",
        r"vit\.layers\.\d+\.0\.(fn\.)?[148]\.(running_mean|running_var|num_batches_tracked)",
        r"vit\.layers\.\d+\.0\.(fn\.)?6\.gate\.[13]\.weight",
        r"vit\.layers\.\d+\.[26]\.fn\.(norm\.gamma|norm\.beta|to_qkv\.weight|to_out\.0\.weight|rel_pos_bias\.weight|mem_kv)",
        r"vit\.layers\.\d+\.[37]\.fn\.(norm\.gamma|norm\.beta|net\.[03]\.(weight|bias))",
        r"vit\.mlp_head\.\d+\.(gamma|beta|weight|bias)",
        r"conditioner\.(null_text_embed|text_embed_stem_mlp\.0\.(weight|bias))",
        r"conditioner\.conditioners\.\d+\.net\.[02]\.(weight|bias)",
        r"token_learner\.net\.[02]\.(weight|bias)",
        r"transformer\.layers\.\d+\.0\.(norm\.gamma|norm\.beta|to_q\.weight|to_kv\.weight|to_out\.0\.weight)",
        r"transformer\.layers\.\d+\.1\.(norm\.gamma|norm\.beta|net\.[03]\.(weight|bias))",
        r"to_logits\.0\.(gamma|beta)",
        r"to_logits\.1\.(weight|bias)",
    )
]
_MBCONV = {
    "0": "expand",
    "1": "expand_norm",
    "3": "depthwise",
    "4": "depthwise_norm",
    "6": "squeeze_excitation",
    "7": "project",
    "8": "project_norm",
}
_NORM_OF_CONV = {"expand": "expand_norm", "depthwise": "depthwise_norm", "project": "project_norm"}
_SUBLAYER = {"2": "block_attn", "3": "block_ff", "6": "grid_attn", "7": "grid_ff"}
_RENAME = {
    "norm.gamma": "norm.weight",
    "to_out.0.weight": "to_out.weight",
    "net.0.weight": "fc1.weight",
    "net.0.bias": "fc1.bias",
    "net.3.weight": "fc2.weight",
    "net.3.bias": "fc2.bias",
}


def _few(keys, n: int = 4) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" (and {len(keys) - n} more)" if len(keys) > n else "")


def _get(sd: dict, key: str) -> Tensor:
    if key not in sd:
        raise ConversionError(f"not a {REFERENCE} RT1 state_dict: it has no {key}")
    return sd[key]


def _ratio(num: int, den: int, what: str) -> int:
    if den <= 0 or num % den:
        raise ConversionError(f"cannot read {what} from the state_dict: {num} is not a multiple of {den}")
    return num // den


# ---- reading and checking the reference state_dict -------------------------------------------------


def load_reference_state_dict(path: Path) -> dict[str, Tensor]:
    """torch.load(weights_only=True) an original `model-{epoch}.pth` -> its state_dict (no "module." prefix)."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        from rt1.model.load import torch_load_reason

        raise ConversionError(f"{path} is not a torch checkpoint ({torch_load_reason(e)})") from None
    if isinstance(state, dict) and "format" in state and "model_config" in state:
        raise ConversionError(f"{path} is already a checkpoint of this project (format {state['format']!r})")
    if isinstance(state, dict) and set(state) & {"state_dict", "model"} and len(state) <= 4:
        inner = state.get("state_dict", state.get("model"))
        state = inner if isinstance(inner, dict) else state
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConversionError(
            f"{path} does not hold a state_dict (a dict of tensors), got {type(state).__name__}"
        )
    return {k.removeprefix("module."): v for k, v in state.items()}


def check_keys(ref_sd: dict[str, Tensor], source: str = "the state_dict") -> None:
    """Raise ConversionError naming a few keys the mapping does not know."""
    unexpected = [k for k in ref_sd if not any(p.fullmatch(k) for p in _KNOWN)]
    if unexpected:
        raise ConversionError(
            f"{source} has {len(unexpected)} keys that are not {REFERENCE} RT1 keys: {_few(unexpected)}"
        )


def infer_config(ref_sd: dict[str, Tensor], base: RT1Config | None = None, **overrides) -> RT1Config:
    """The RT1Config of a reference state_dict: its widths and depths, the rest from `base` (`original`).

    Read from the state_dict: text_embed_dim, cond_dim, channels, conv_stem_dim, dim, depth, dim_head,
    attention_window, mbconv_expansion, mbconv_shrinkage, attention_memory_kv, ff_mult, film_mult,
    transformer_depth / heads / dim_head, num_learned_tokens, token_learner_ff_mult, num_bins.
    `overrides` (e.g. image_size, num_frames) replace fields afterwards.
    """
    base = base if base is not None else PRESETS["original"].model
    sd = ref_sd
    stem = _get(sd, "vit.conv_stem.0.weight")  # (stem, C, 3, 3)
    depth, widths = _maxvit_stages(sd)
    dim = widths[0]
    hidden = _get(sd, "vit.layers.0.0.0.weight").shape[0]  # block 0 always downsamples: no "fn."
    se_hidden = _get(sd, "vit.layers.0.0.6.gate.1.weight").shape[0]
    window, heads = _window_and_heads(sd)
    mem = sd.get("vit.layers.0.2.fn.mem_kv")
    d = widths[-1]
    tf_layers = sorted({int(m[1]) for k in sd if (m := re.match(r"transformer\.layers\.(\d+)\.", k))})
    tf_dim_head = _get(sd, "transformer.layers.0.0.to_kv.weight").shape[0] // 2
    ff_mult = _ff_mult(sd, dim, d)
    tokens = _get(sd, "token_learner.net.2.weight").shape[0]
    logits_rows = _get(sd, "to_logits.1.weight").shape[0]
    num_actions = overrides.get("num_actions", base.num_actions)
    values = dict(
        channels=stem.shape[1],
        conv_stem_dim=stem.shape[0],
        dim=dim,
        depth=tuple(depth),
        dim_head=_ratio(dim, heads, "the MaxViT dim_head"),
        attention_window=window,
        mbconv_expansion=_ratio(hidden, dim, "the MBConv expansion"),
        mbconv_shrinkage=se_hidden / hidden,
        attention_memory_kv=int(mem.shape[2]) if mem is not None else 0,
        ff_mult=ff_mult,
        film_mult=_ratio(
            _get(sd, "conditioner.conditioners.0.net.0.weight").shape[0],
            stem.shape[0],
            "the FiLM hidden multiplier",
        ),
        transformer_depth=len(tf_layers),
        transformer_dim_head=tf_dim_head,
        transformer_heads=_ratio(
            _get(sd, "transformer.layers.0.0.to_q.weight").shape[0], tf_dim_head, "the transformer heads"
        ),
        transformer_dropout=0.0,  # the reference's transformer has no dropout
        num_learned_tokens=tokens,
        token_learner_ff_mult=_ratio(
            _get(sd, "token_learner.net.0.weight").shape[0], tokens * d, "the TokenLearner ff_mult"
        ),
        text_embed_dim=_get(sd, "conditioner.null_text_embed").shape[0],
        cond_dim=_get(sd, "conditioner.text_embed_stem_mlp.0.weight").shape[0],
        num_bins=_ratio(logits_rows, num_actions, f"the bins per action ({num_actions} actions)"),
    )
    values.update(overrides)
    try:
        return base.replace(**values)
    except ValueError as e:
        raise ConversionError(f"the state_dict's configuration is not a valid RT1Config: {e}") from None


def _maxvit_stages(sd: dict[str, Tensor]) -> tuple[list[int], list[int]]:
    """(blocks per MaxViT stage, width of each stage) of a reference state_dict; the widths double."""
    blocks = sorted({int(m[1]) for k in sd if (m := re.match(r"vit\.layers\.(\d+)\.", k))})
    if not blocks or blocks != list(range(len(blocks))):
        raise ConversionError(f"not a {REFERENCE} RT1 state_dict: MaxViT blocks {blocks[:8]} are not 0..n-1")
    depth, widths = [], []
    for i in blocks:
        downsample = f"vit.layers.{i}.0.0.weight" in sd
        project = _get(sd, f"vit.layers.{i}.0.{'' if downsample else 'fn.'}7.weight")
        if downsample:
            depth.append(0)
            widths.append(project.shape[0])
        elif not depth:
            raise ConversionError("not a RT1 state_dict of the reference: MaxViT block 0 does not downsample")
        depth[-1] += 1
    if widths != [widths[0] * 2**s for s in range(len(widths))]:
        raise ConversionError(
            f"MaxViT stage widths {widths} do not double from stage to stage (this project's "
            f"MaxViT has width dim * 2**stage)"
        )
    return depth, widths


def _window_and_heads(sd: dict[str, Tensor]) -> tuple[int, int]:
    """(attention window, heads) of MaxViT block 0's relative position table ((2 * window - 1)**2, heads)."""
    rel = _get(sd, "vit.layers.0.2.fn.rel_pos_bias.weight")
    side = round(rel.shape[0] ** 0.5)
    if side * side != rel.shape[0] or side % 2 == 0:
        raise ConversionError(f"relative position table with {rel.shape[0]} rows is not (2 * window - 1)**2")
    return (side + 1) // 2, rel.shape[1]


def _ff_mult(sd: dict[str, Tensor], dim: int, d: int) -> int:
    """The feed-forward multiplier, the same in the MaxViT (width `dim`) and the transformer (width `d`)."""
    ff_mult = _ratio(_get(sd, "vit.layers.0.3.fn.net.0.weight").shape[0], dim, "the MaxViT ff_mult")
    tf_ff_mult = _ratio(
        _get(sd, "transformer.layers.0.1.net.0.weight").shape[0], d, "the transformer ff_mult"
    )
    if ff_mult != tf_ff_mult:
        raise ConversionError(
            f"MaxViT ff_mult {ff_mult} and transformer ff_mult {tf_ff_mult} differ "
            f"(this project has one ff_mult)"
        )
    return ff_mult


# ---- the conversion --------------------------------------------------------------------------------


def convert_state_dict(ref_sd: dict[str, Tensor], config: RT1Config) -> dict[str, Tensor]:
    """Reference state_dict -> this project's RT1(config) state_dict (checked key for key, shape for shape)."""
    ref_sd = {k.removeprefix("module."): v for k, v in ref_sd.items()}
    check_keys(ref_sd)
    num_blocks = sum(config.depth)
    out: dict[str, Tensor] = {}
    conv_bias: dict[str, Tensor] = {}  # our BatchNorm prefix -> the conv bias its running_mean absorbs
    for key, value in ref_sd.items():
        if key.startswith("vit.mlp_head."):
            continue
        if key.endswith(".beta"):
            if torch.count_nonzero(value):
                raise ConversionError(
                    f"LayerNorm bias {key} is not zero: this project's LayerNorms have no bias"
                )
            continue
        if m := re.fullmatch(r"vit\.layers\.(\d+)\.0\.(?:fn\.)?(\d)\.(.+)", key):
            _map_mbconv(*m.groups(), value, out, conv_bias)
        elif m := re.fullmatch(r"vit\.layers\.(\d+)\.(\d)\.fn\.(.+)", key):
            i, idx, rest = m.groups()
            out[f"vit.blocks.{i}.{_SUBLAYER[idx]}.{_RENAME.get(rest, rest)}"] = value
        else:
            _map_other(key, value, ref_sd, num_blocks, out)
    for norm, bias in conv_bias.items():
        mean_key = f"{norm}.running_mean"
        if mean_key not in out:
            raise ConversionError(f"the state_dict has a conv bias but no BatchNorm statistics for {norm}")
        out[mean_key] = out[mean_key] - bias.to(out[mean_key].dtype)
    return _fitted(out, config)


def _map_mbconv(i: str, idx: str, rest: str, value: Tensor, out: dict, conv_bias: dict) -> None:
    """One tensor of MaxViT block `i`'s MBConv (sub-module `idx`) into `out`; a conv bias into `conv_bias`."""
    name = _MBCONV[idx]
    prefix = f"vit.blocks.{i}.mbconv.{name}"
    if name in _NORM_OF_CONV:
        if rest == "bias":
            conv_bias[f"vit.blocks.{i}.mbconv.{_NORM_OF_CONV[name]}"] = value
        else:  # 1x1 convolutions (out, in, 1, 1) -> Linear (out, in); the depthwise one stays
            out[f"{prefix}.weight"] = value if name == "depthwise" else value[:, :, 0, 0]
    elif name == "squeeze_excitation":
        out[f"{prefix}.{rest.replace('gate.1.', 'gate.0.').replace('gate.3.', 'gate.2.')}"] = value
    else:
        out[f"{prefix}.{rest}"] = value


def _map_other(key: str, value: Tensor, ref_sd: dict, num_blocks: int, out: dict) -> None:
    """One tensor outside the MaxViT blocks (FiLM, stem, TokenLearner, transformer, logits) into `out`."""
    if m := re.fullmatch(r"conditioner\.conditioners\.(\d+)\.net\.(.+)", key):
        j, rest = int(m[1]), m[2]
        if j < num_blocks:
            out[f"vit.blocks.{j}.film.net.{rest}"] = value
        else:
            layer, sub = divmod(j - num_blocks, 2)
            out[f"transformer.layers.{layer}.{sub}.film.net.{rest}"] = value
    elif key == "conditioner.null_text_embed" or key.startswith(("vit.conv_stem.", "to_logits.1.")):
        out[key] = value
    elif key.startswith("conditioner.text_embed_stem_mlp.0."):
        out[key.replace("text_embed_stem_mlp", "stem")] = value
    elif m := re.fullmatch(r"token_learner\.net\.([02])\.(weight|bias)", key):
        layer, kind = m.groups()
        if layer == "0":  # grouped 1x1 conv on the repeated input = one dense Linear
            out[f"token_learner.fc1.{kind}"] = value[:, :, 0, 0] if kind == "weight" else value
        else:
            out[f"token_learner.fc2_{kind}"] = value[:, :, 0, 0] if kind == "weight" else value
    elif m := re.fullmatch(r"transformer\.layers\.(\d+)\.([01])\.(.+)", key):
        layer, sub, rest = m.groups()
        prefix = f"transformer.layers.{layer}.{sub}"
        if rest == "to_q.weight":
            out[f"{prefix}.to_qkv.weight"] = torch.cat((value, _get(ref_sd, f"{prefix}.to_kv.weight")), dim=0)
        elif rest != "to_kv.weight":
            out[f"{prefix}.{_RENAME[rest]}"] = value
    elif key == "to_logits.0.gamma":
        out["to_logits.0.weight"] = value
    else:  # pragma: no cover - check_keys and the branches above cover the same keys
        raise ConversionError(f"unmapped reference key {key}")


def _fitted(out: dict[str, Tensor], config: RT1Config) -> dict[str, Tensor]:
    """`out` in RT1(config)'s key order, contiguous, once it has exactly its keys and shapes."""
    from rt1.model.rt1 import RT1

    with torch.device("meta"):
        expected = RT1(config).state_dict()
    missing, extra = sorted(set(expected) - set(out)), sorted(set(out) - set(expected))
    if missing or extra:
        raise ConversionError(
            "the state_dict does not fit the configuration "
            + "; ".join(
                part
                for part in (
                    f"missing {_few(missing)}" if missing else "",
                    f"not in the model {_few(extra)}" if extra else "",
                )
                if part
            )
        )
    wrong = [
        f"{k} {tuple(out[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if out[k].shape != v.shape
    ]
    if wrong:
        raise ConversionError(
            f"{len(wrong)} tensors have the wrong shape for the configuration: {_few(wrong, 3)}"
        )
    return {k: out[k].contiguous() for k in expected}


def converted_checkpoint(
    ref_sd: dict[str, Tensor], config: RT1Config, source: str, epoch: int | None
) -> dict:
    """The checkpoint dict (this project's format, no optimizer) of a converted reference state_dict."""
    from rt1.model.load import CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_VERSION

    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "model": convert_state_dict(ref_sd, config),
        "model_config": config.to_dict(),
        "train_args": {},
        "epoch": epoch,
        "converted_from": {"path": source, "reference": REFERENCE, "reference_tensors": len(ref_sd)},
        "torch_version": str(torch.__version__),
    }


def convert_checkpoint(checkpoint: Path, out_dir: Path, **overrides) -> tuple[Path, RT1Config]:
    """Convert an original `model-{epoch}.pth` -> (out_dir/{stem}.pt, its RT1Config). Writes atomically."""
    from rt1.io import atomic_output

    checkpoint = Path(checkpoint)
    ref_sd = load_reference_state_dict(checkpoint)
    check_keys(ref_sd, str(checkpoint))
    config = infer_config(ref_sd, **overrides)
    match = re.search(r"(\d+)$", checkpoint.stem)
    state = converted_checkpoint(ref_sd, config, str(checkpoint), int(match[1]) if match else None)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConversionError(f"cannot create output directory {out_dir}: {e.strerror}") from None
    out = out_dir / f"{checkpoint.stem}.pt"
    with atomic_output(out) as tmp:
        torch.save(state, tmp)
    return out, config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rt1.model.convert_original",
        description=f"Convert the original pipeline's model-{{epoch}}.pth ({REFERENCE} RT1 state_dict) to a "
        f"checkpoint of this project (preset `original`).",
    )
    parser.add_argument(
        "--checkpoint", required=True, type=Path, help="save/{model}_{describe}/model-{epoch}.pth"
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory (gets {input stem}.pt)")
    original = PRESETS["original"].model
    parser.add_argument(
        "--image-size",
        type=int,
        default=original.image_size,
        help=f"input image side (not in the state_dict; default {original.image_size})",
    )
    parser.add_argument(
        "--num-frames",
        type=int,
        default=original.num_frames,
        help=f"frames per window (not in the state_dict; default {original.num_frames})",
    )
    args = parser.parse_args(argv)

    def run(_) -> int:
        out, config = convert_checkpoint(
            args.checkpoint, args.out, image_size=args.image_size, num_frames=args.num_frames
        )
        differs = {k: v for k, v in config.to_dict().items() if v != original.to_dict()[k]}
        print(
            f"wrote {out}: preset original, text_embed_dim {config.text_embed_dim}"
            + (f"; differs from the preset in {differs}" if differs else "")
        )
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
