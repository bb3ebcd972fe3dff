"""Convert Google's RT-1 TF checkpoint (rt1main's layout) or RT-1-X's Flax checkpoint to a model directory.

    python -m rt1.model.convert_google --checkpoint DIR/rt1main/ckpt-424760 --out OUT [--action-order K1,K2,...]
    python -m rt1.model.convert_google --checkpoint rt_1_x_jax --out OUT

RT-1-X (the Open X-Embodiment release's Flax msgpack checkpoint: a file, its directory, or checkpoint_<N>
entries) is detected from the files (`rtx_checkpoint.is_rtx_checkpoint`) and read by
`rtx_checkpoint.state_dict_and_config_from_rtx` (its config is `GoogleRT1Config.rtx()` with the checkpoint's
sizes, its action order RT-1-X's, which the release's code hard-codes); an Orbax OCDBT directory is a
one-line error saying so. Anything else is read as Google's TF checkpoint: with `tf.train.load_checkpoint`
(PREFIX, or a directory holding one `*.index`), and the converter writes
OUT/model.safetensors + config.json + README.md (`rt1.model.pretrained`), which `load_model`, `RT1Policy`,
`rt1.serve`, plot_actions.py and `train_ddp.py --init-from` take. OUT is built under a temporary name and
renamed when complete: on any error nothing is written.

The configuration is read from the tensors' shapes: EfficientNet width from the top conv's channels (1280 x
width), depth from the MBConv blocks per stage, TokenLearner tokens and bottleneck, decoder layers, heads and
key_dim (the MHA query kernel [d, heads, key_dim]), model_dim, the vocabulary (`_output_tokens`), the history
(`_position_emb` rows / tokens per step). Not in a checkpoint, so rt1main's: the 256x320 camera frames, the
EfficientNet's 300x300 input, dropout 0.1 and drop-connect 0.2 (training only). Every tensor under
`agent/_actor_network/` fills exactly one parameter or buffer (`checkpoint_layout`); the optimizer's
(`agent/_actor_optimizer/`, `.OPTIMIZER_SLOT`), `global_step`, `save_counter` and the object graph are skipped
and named in the log; any other tensor, a missing or misshapen one, or a file that cannot be read is a
one-line error naming it.

Action order: which RLDS key each of the 11 output slots predicts is Google's gin macro ACTION_ORDER, which
is not in Google's repository. The default, DEFAULT_ACTION_ORDER, is the best evidence (docs/training.md, "Google's
trained RT-1"): Google's own tests build the tokenizer and network with the order starting terminate_episode,
world_vector, rotation_delta, gripper_closedness_action (transformer_network_test.py L76/L107,
action_tokenizer_test.py L145; the tokenizer's docstring recommends it), and Open X-Embodiment's JAX RT-1
(Google's RT-1-X, models/rt1.py L287-305) hard-codes that order followed by
base_displacement_vertical_rotation, base_displacement_vector. rt1main's policy_specs.pbtxt lists the action
spec alphabetically (a sorted dict), which says nothing of the token order. `--action-order` overrides it;
the order is recorded as model_config.action_order and the model's logits come out in rt1.actions' order.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np

from rt1.actions import ACTION_KEYS, NUM_ACTION_TOKENS, check_action_order
from rt1.errors import RT1Error, one_line, run_cli
from rt1.google_config import IMAGE_TOKEN_WIDTH, RTX_ACTION_ORDER, GoogleRT1Config
from rt1.model.google.checkpoint_layout import NETWORK_PREFIX, LayoutError, checkpoint_layout

VARIABLE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"  # how tf.train.Checkpoint stores a variable's value
# rt1main's best evidence (module docstring): RT-1-X's order, terminate_episode, world_vector, rotation_delta,
# gripper_closedness_action, base_displacement_vertical_rotation, base_displacement_vector
DEFAULT_ACTION_ORDER = RTX_ACTION_ORDER
ACTION_ORDER_EVIDENCE = (
    "Google's tests build the tokenizer with terminate_episode, world_vector, rotation_delta, "
    "gripper_closedness_action first (transformer_network_test.py L76/L107, action_tokenizer_test.py L145); "
    "Open X-Embodiment's JAX RT-1 hard-codes that order then base_displacement_vertical_rotation, "
    "base_displacement_vector; rt1main's own gin ACTION_ORDER is not published (policy_specs.pbtxt lists the "
    "spec alphabetically)"
)
RTX_ORDER_EVIDENCE = "RT-1-X's code hard-codes it (open_x_embodiment models/rt1.py L287-305)"
# Not the network's: skipped and named in the log.
SKIPPED = (
    ("optimizer", re.compile(r"^agent/_actor_optimizer/|\.OPTIMIZER_SLOT")),
    ("bookkeeping", re.compile(r"^(global_step|save_counter)$|_CHECKPOINTABLE_OBJECT_GRAPH")),
)
ENC = NETWORK_PREFIX + "_image_tokenizer/_tokenizer/net/layer_with_weights-"
DEPTH_CANDIDATES = (1.0, 1.1, 1.2, 1.4, 1.8, 2.2, 2.6, 3.1) + tuple(k / 10 for k in range(1, 41))


class ConvertError(RT1Error, ValueError):
    """The checkpoint cannot be converted (missing file, another network, a missing or misshapen tensor)."""


# ---- reading ---------------------------------------------------------------------------------------


def resolve_prefix(path: Path) -> Path:
    """A checkpoint prefix (DIR/ckpt-424760), or a directory holding exactly one `*.index`."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.index"))
        if len(found) != 1:
            names = ", ".join(p.name for p in found) or "none"
            raise ConvertError(f"{path}: expected one checkpoint (*.index) in the directory, found {names}")
        return found[0].with_suffix("")
    index = path.with_name(path.name + ".index")
    if not index.is_file():
        raise ConvertError(
            f"checkpoint {path}: {index.name} does not exist (pass the prefix, e.g. ckpt-424760)"
        )
    return path


def open_checkpoint(prefix: Path):
    """-> (a tf CheckpointReader, {name without VARIABLE_SUFFIX: shape}) of every tensor in the checkpoint."""
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(str(prefix))
        shapes = reader.get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError) as e:
        raise ConvertError(f"checkpoint {prefix} cannot be read ({one_line(e)})") from None
    return reader, {k.removesuffix(VARIABLE_SUFFIX): list(v) for k, v in shapes.items()}


def read_google_checkpoint(prefix: Path) -> dict[str, np.ndarray]:
    """{name: array} of every variable of a checkpoint (the VARIABLE_SUFFIX removed); tests and small files."""
    reader, shapes = open_checkpoint(prefix)
    return {k: reader.get_tensor(k + VARIABLE_SUFFIX) for k in shapes if k != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def write_google_checkpoint(prefix: Path, tensors: dict[str, np.ndarray]) -> None:
    """A TF checkpoint (PREFIX.index + .data) of `tensors`, named as tf.train.Checkpoint names variables (tests,
    benchmarks/bench_convert_google.py)."""
    import tensorflow as tf

    names = sorted(tensors)
    tf.raw_ops.SaveV2(
        prefix=str(prefix),
        tensor_names=[n + VARIABLE_SUFFIX for n in names],
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(tensors[n]) for n in names],
    )


def split_tensors(shapes: dict[str, list[int]], where: Path) -> tuple[dict[str, list[int]], dict[str, int]]:
    """-> (the network's tensors, {skipped group: count}); a tensor of neither is an error naming it."""
    network = {k: v for k, v in shapes.items() if k.startswith(NETWORK_PREFIX)}
    if not network:
        sample = ", ".join(sorted(shapes)[:3]) or "no tensors"
        raise ConvertError(
            f"{where} is not a checkpoint of Google's RT-1: no {NETWORK_PREFIX} tensors ({sample})"
        )
    skipped: dict[str, int] = {}
    for name in sorted(set(shapes) - set(network)):
        group = next((g for g, pattern in SKIPPED if pattern.search(name)), None)
        if group is None:
            raise ConvertError(f"{where}: tensor {name} is neither the network's nor an optimizer's")
        skipped[group] = skipped.get(group, 0) + 1
    return network, skipped


# ---- the configuration from the shapes -------------------------------------------------------------


def _shape(shapes: dict, key: str, rank: int, where: Path) -> list[int]:
    shape = shapes.get(NETWORK_PREFIX + key)
    if shape is None:
        raise ConvertError(f"{where}: tensor {NETWORK_PREFIX + key} is missing (the configuration needs it)")
    if len(shape) != rank:
        raise ConvertError(
            f"{where}: tensor {NETWORK_PREFIX + key} has shape {shape}, expected {rank} dimensions"
        )
    return shape


def infer_config(
    shapes: dict[str, list[int]], where: Path, action_order=DEFAULT_ACTION_ORDER
) -> GoogleRT1Config:
    """GoogleRT1Config of a checkpoint's network tensors (names without the prefix's VARIABLE_SUFFIX)."""
    base = _efficientnet(shapes, where)
    tl = "_image_tokenizer/_token_learner/mlp/"
    bottleneck, tokens = _shape(shapes, tl + "_output_layer/kernel", 2, where)
    t = "_transformer/"
    num_layers = len({k.split("/")[4] for k in shapes if k.startswith(NETWORK_PREFIX + t + "_layers/")})
    model_dim, heads, key_dim = _shape(shapes, t + "_layers/0/mha1/_query_dense/kernel", 3, where)
    vocab = _shape(shapes, t + "_output_tokens/kernel", 2, where)[1]
    rows = _shape(shapes, t + "_position_emb/kernel", 2, where)[0]
    if rows % (tokens + NUM_ACTION_TOKENS):
        raise ConvertError(
            f"{where}: tensor {NETWORK_PREFIX}{t}_position_emb/kernel has {rows} rows, not a multiple of "
            f"{tokens} image + {NUM_ACTION_TOKENS} action tokens per step"
        )
    context = _shape(shapes, "_image_tokenizer/_tokenizer/film_layer/_projection_add/kernel", 2, where)[0]
    if context != IMAGE_TOKEN_WIDTH:
        raise ConvertError(
            f"{where}: the FiLM context has {context} values, Google's RT-1 has {IMAGE_TOKEN_WIDTH}"
        )
    return base.replace(
        num_frames=rows // (tokens + NUM_ACTION_TOKENS),
        num_learned_tokens=tokens,
        token_learner_bottleneck=bottleneck,
        num_layers=num_layers,
        num_heads=heads,
        key_dim=key_dim,
        model_dim=model_dim,
        num_bins=vocab,
        action_order=tuple(action_order),
    )


def _efficientnet(shapes: dict[str, list[int]], where: Path) -> GoogleRT1Config:
    """The default GoogleRT1Config with the EfficientNet width and depth coefficients the tensors have."""
    from rt1.model.google.efficientnet import block_specs, round_filters

    layers = sorted({int(m.group(1)) for k in shapes if (m := re.match(re.escape(ENC) + r"(\d+)/", k))})
    if not layers:
        raise ConvertError(f"{where}: no EfficientNet layers ({ENC}N) in the checkpoint")
    rel = ENC.removeprefix(NETWORK_PREFIX)
    stem = _shape(shapes, f"{rel}1/kernel", 4, where)[3]
    top = _shape(shapes, f"{rel}{layers[-2]}/kernel", 4, where)[3]
    width = round(top / 1280, 4)
    if round_filters(32, width) != stem or round_filters(1280, width) != top:
        raise ConvertError(
            f"{where}: tensor {ENC}1/kernel has {stem} channels, no EfficientNet width fits it"
        )
    depthwise = [shapes[k] for k in sorted(shapes, key=_layer_number) if k.endswith("/depthwise_kernel")]
    blocks = [(s[0], s[2]) for s in depthwise]  # (kernel, channels) of every MBConv block in order
    base = GoogleRT1Config(width_coefficient=width)
    depth = next(
        (
            d
            for d in DEPTH_CANDIDATES
            if [
                (b.kernel, b.filters_in * b.expand_ratio)
                for b in block_specs(base.replace(depth_coefficient=d))
            ]
            == blocks
        ),
        None,
    )
    if depth is None:
        raise ConvertError(
            f"{where}: {len(blocks)} MBConv blocks (depthwise_kernel) fit no EfficientNet depth"
        )
    return base.replace(depth_coefficient=depth)


def _layer_number(key: str) -> int:
    m = re.match(re.escape(ENC) + r"(\d+)/", key)
    return int(m.group(1)) if m else -1


# ---- converting ------------------------------------------------------------------------------------


def convert(
    checkpoint: Path, out: Path, *, action_order=DEFAULT_ACTION_ORDER, overwrite: bool = False, log=print
) -> Path:
    """Write OUT (a model directory) from Google's TF checkpoint; returns OUT. Raises ConvertError."""
    import torch

    from rt1.model.factory import build_model
    from rt1.model.google.rtx_checkpoint import is_rtx_checkpoint
    from rt1.model.model_dir import check_output_dir

    out = check_output_dir(Path(out), overwrite, ConvertError)
    try:
        order = check_action_order(action_order)
    except ValueError as e:
        raise ConvertError(f"--action-order: {e}") from None
    start = time.perf_counter()
    if is_rtx_checkpoint(checkpoint):
        return _convert_rtx(Path(checkpoint), out, order, log, start)
    prefix = resolve_prefix(checkpoint)
    reader, shapes = open_checkpoint(prefix)
    network, skipped = split_tensors(shapes, prefix)
    config = infer_config(network, prefix, order)
    with torch.device("meta"):  # shapes only: the values come from the checkpoint
        model = build_model(config)
    layout = checkpoint_layout(model)
    extra = sorted(set(network) - set(layout))
    if extra:
        raise ConvertError(f"{prefix}: tensor {extra[0]} has no place in Google's RT-1 ({len(extra)} such)")

    tensors = _read_tensors(model, reader, network, prefix)
    values = sum(t.numel() for t in tensors.values())
    log(f"read {len(tensors)} tensors ({values:,} values) of {prefix} in {time.perf_counter() - start:.1f} s")
    for group, count in skipped.items():
        log(f"skipped {count} {group} tensors (not the network's)")
    step = int(reader.get_tensor("global_step" + VARIABLE_SUFFIX)) if "global_step" in shapes else None
    json_config = _json_config(config, prefix, order, step, skipped)
    return _write(out, model, tensors, json_config, log, start)


def _read_tensors(model, reader, network: dict, prefix: Path) -> dict:
    """The state_dict of `model` read from the checkpoint's `network` tensors (ConvertError if one cannot be)."""
    from rt1.model.google.checkpoint_layout import state_dict_from_google

    def read(key: str) -> np.ndarray:
        import tensorflow as tf

        if key not in network:
            raise KeyError(key)
        try:
            return reader.get_tensor(key + VARIABLE_SUFFIX)
        except (tf.errors.OpError, IndexError, ValueError) as e:  # a truncated .data file: IndexError
            raise ConvertError(f"{prefix}: tensor {key} cannot be read ({one_line(e)})") from None

    try:
        return state_dict_from_google(model, read)
    except LayoutError as e:
        raise ConvertError(f"{prefix}: {e}") from None


def _json_config(
    config: GoogleRT1Config, prefix: Path, order: tuple, step: int | None, skipped: dict
) -> dict:
    """config.json of the converted model: its configuration, image preprocessing, source and conversion."""
    from rt1.config import PRESETS

    ours = config.replace(action_order=ACTION_KEYS, dropout=0.1, drop_connect_rate=0.2)
    conversion = {
        "from": "Google's TF checkpoint (google-research/robotics_transformer layout)",
        "action_order": list(order),
        "action_order_source": "default: " + ACTION_ORDER_EVIDENCE
        if order == DEFAULT_ACTION_ORDER
        else "--action-order",
        "skipped": skipped,
    }
    return converted_config(
        config,
        preset="rt1" if ours == PRESETS["rt1"].model else None,
        image_input="RLDS observation/image: the camera's uint8 (256, 320, 3) RGB frame as it is (rt1main's "
        "training frames; stage 2 --image-size native keeps them)",
        global_step=step,
        source=prefix.name,
        conversion=conversion,
    )


def converted_config(config, *, preset, image_input: str, global_step, source: str, conversion: dict) -> dict:
    """The config.json of a converted model: no training run of ours, frames as the camera gives them (not
    re-encoded: jpeg_quality null), and how it was converted."""
    from rt1.model.model_dir import base_config

    json_config = base_config(
        config,
        preset=preset,
        image_preprocessing={
            "input": image_input,
            "jpeg_quality": None,
            "steps": "none before the network, then what the network does (formula)",
        },
        embedding_source="universal-sentence-encoder",
        training={
            "train_args": {},
            "epoch": None,
            "global_step": global_step,
            "epoch_complete": None,
            "metrics": {},
        },
        source=source,
    )
    json_config["conversion"] = conversion
    return json_config


def _write(out: Path, model, tensors: dict, json_config: dict, log, start: float) -> Path:
    from rt1.model.model_dir import model_card, write_model_dir

    card = model_card(
        json_config,
        sum(t.numel() for k, t in tensors.items() if k in dict(model.named_parameters())),
        note="converted by python -m rt1.model.convert_google",
    )
    write_model_dir(out, tensors, json_config, card)
    log(f"wrote {out}/ (model.safetensors, config.json, README.md) in {time.perf_counter() - start:.1f} s")
    return out


def _convert_rtx(checkpoint: Path, out: Path, order: tuple[str, ...], log, start: float) -> Path:
    """RT-1-X's Flax checkpoint -> OUT (`convert`'s RT-1-X branch)."""
    import torch

    from rt1.model.factory import build_model
    from rt1.model.google.rtx_checkpoint import RTXCheckpointError, state_dict_and_config_from_rtx

    try:
        config, tensors, ignored = state_dict_and_config_from_rtx(checkpoint, action_order=order)
    except RTXCheckpointError as e:
        raise ConvertError(str(e)) from None
    with torch.device("meta"):
        model = build_model(config)
    values = sum(t.numel() for t in tensors.values())
    seconds = time.perf_counter() - start
    log(f"read {len(tensors)} tensors ({values:,} values) of RT-1-X's {checkpoint} in {seconds:.1f} s")
    if ignored:
        log(f"skipped top-level entries {ignored} (not the network's)")
    json_config = converted_config(
        config,
        preset=None,
        image_input=f"RLDS observation/image: the camera's uint8 {config.frame_size} RGB frame as it is (the "
        "network resizes it to 300x300 as RT-1-X's policy does)",
        global_step=None,
        source=checkpoint.name,
        conversion={
            "from": "RT-1-X's Flax checkpoint (google-deepmind/open_x_embodiment, models/rt1.py)",
            "action_order": list(order),
            "action_order_source": RTX_ORDER_EVIDENCE if order == RTX_ACTION_ORDER else "--action-order",
            "skipped": {"top-level entries": len(ignored)} if ignored else {},
        },
    )
    return _write(out, model, tensors, json_config, log, start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rt1.model.convert_google",
        description="Convert Google's RT-1 TF checkpoint (e.g. trained_checkpoints/rt1main/ckpt-424760 of "
        "google-research/robotics_transformer) or RT-1-X's Flax checkpoint (open_x_embodiment's rt_1_x_jax, "
        "detected from its files) to a model directory (model.safetensors, config.json, README.md).",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        help="TF checkpoint prefix (DIR/ckpt-424760) or its directory; or RT-1-X's Flax checkpoint file or directory",
    )
    parser.add_argument("--out", type=Path, required=True, help="model directory to write (must not exist)")
    parser.add_argument(
        "--action-order",
        default=",".join(DEFAULT_ACTION_ORDER),
        help="the RLDS action keys of the network's output slots, comma-separated (default: rt1main's best "
        f"evidence and RT-1-X's order, {','.join(DEFAULT_ACTION_ORDER)})",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing model directory")
    args = parser.parse_args(argv)

    def run(_) -> int:
        order = tuple(part.strip() for part in args.action_order.split(","))
        convert(args.checkpoint, args.out, action_order=order, overwrite=args.overwrite)
        return 0

    return run_cli(run)


__all__ = [
    "ConvertError",
    "DEFAULT_ACTION_ORDER",
    "VARIABLE_SUFFIX",
    "convert",
    "infer_config",
    "main",
    "read_google_checkpoint",
    "write_google_checkpoint",
]


if __name__ == "__main__":
    sys.exit(main())
