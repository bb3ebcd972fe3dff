"""Export a training checkpoint as a model directory in the Hugging Face layout (safetensors, no pickle).

    python -m rt1.export --checkpoint save/rt1_tiny_ddp/checkpoint-10.pt --out exported/rt1-tiny \
        [--embedding-source mini-fractal] [--jpeg-quality 90] [--overwrite]

writes DIR/model.safetensors, DIR/config.json and DIR/README.md (`rt1.model.pretrained` documents them):
the folder `huggingface_hub.upload_folder` takes as it is. `rt1.model.load_pretrained(DIR)` (and
`load_model`, plot_actions.py, eval_closed_loop.py, rt1.serve) read it back with exactly the checkpoint's
logits. The directory is built under a temporary name next to DIR and renamed when complete, so DIR is
never half-written.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from rt1.errors import RT1Error, one_line, run_cli
from rt1.model_families import architecture

EXPORT_NOTE = "exported by python -m rt1.export"


class ExportError(RT1Error, ValueError):
    """The export cannot be made (bad checkpoint, existing output, bad option); the message names it."""


def _preset_name(train_args: dict, model_config) -> str | None:
    from rt1.config import PRESETS

    name = train_args.get("preset")
    if name in PRESETS:
        return name
    base = {k: v for k, v in model_config.to_dict().items() if k != "cond_drop_prob"}
    for preset in PRESETS.values():
        if {k: v for k, v in preset.model.to_dict().items() if k != "cond_drop_prob"} == base:
            return preset.name
    return None


def _plain(value):
    """JSON-safe copy of checkpoint values (tensors and numpy scalars become numbers/lists)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def build_config(
    state: dict, model_config, checkpoint: Path, embedding_source: str, jpeg_quality: int
) -> dict:
    """The config.json of an export (format in rt1.model.pretrained)."""
    from rt1.data.images import DATASET_JPEG_QUALITY, RESIZE_DESCRIPTION
    from rt1.model.pretrained import PRETRAINED_FORMAT, PRETRAINED_FORMAT_VERSION, tokenizer_spec
    from rt1.rlds_spec import IMAGE_SHAPE

    train_args = _plain(dict(state.get("train_args") or {}))
    height, width = model_config.frame_size
    return {
        "format": PRETRAINED_FORMAT,
        "format_version": PRETRAINED_FORMAT_VERSION,
        "model_type": "rt1",
        "preset": _preset_name(train_args, model_config),
        "model_config": model_config.to_dict(),
        "num_frames": model_config.num_frames,
        "action_tokenizer": tokenizer_spec(),
        "image_preprocessing": {
            "input": f"RLDS observation/image: uint8 (H, W, 3) RGB; the camera's is {list(IMAGE_SHAPE)}",
            "dataset_jpeg_quality": DATASET_JPEG_QUALITY,
            "resize": RESIZE_DESCRIPTION,
            "image_size": [height, width],
            "jpeg_quality": int(jpeg_quality),
            "steps": "JPEG at dataset_jpeg_quality, squash-resize to image_size, JPEG at jpeg_quality, decode "
            "(rt1.data.images.training_frame), then what the network does (formula)",
            **model_config.pixel_processing(),
        },
        "instruction_embedding": {"dim": model_config.text_embed_dim, "source": embedding_source},
        "training": {
            "train_args": train_args,
            "epoch": _plain(state.get("epoch")),
            "global_step": _plain(state.get("global_step")),
            "epoch_complete": _plain(state.get("epoch_complete")),
            "metrics": _plain(dict(state.get("metrics") or {})),
        },
        "source_checkpoint": Path(checkpoint).name,
    }


def model_card(config: dict, num_parameters: int) -> str:
    """A short README.md: what the model is, what it was trained on, its metrics, how to load it."""
    training = config["training"]
    args = training["train_args"]
    mc = config["model_config"]
    data = args.get("data_dir")
    lines = [
        "---",
        "library_name: pytorch",
        "tags: [robotics, rt-1, imitation-learning]",
        "---",
        "",
        f"# RT-1 ({config['preset'] or 'custom'} preset)",
        "",
        f"RT-1 ({architecture(mc.get('model_type', 'maxvit'))}) with {num_parameters:,} parameters, "
        f"{'x'.join(map(str, config['image_preprocessing']['image_size']))} input, "
        f"{config['num_frames']}-frame history, "
        f"{len(config['action_tokenizer']['names'])} action tokens of {config['action_tokenizer']['num_bins']} bins. "
        f"{EXPORT_NOTE} from `{config['source_checkpoint']}`.",
        "",
        "## Training",
        "",
        f"- data: {f'`{data}`' if data else 'not recorded (converted checkpoint)'} (fractal20220817_data format), "
        f"instruction embeddings: {config['instruction_embedding']['source']} "
        f"({config['instruction_embedding']['dim']}-d)",
        f"- train index: `{args['train_index']}`"
        if args.get("train_index")
        else "- train index: not recorded",
        f"- epoch {training['epoch']}, {training['global_step']} optimizer steps"
        if training.get("global_step") is not None
        else "- steps: not recorded",
    ]
    run = [f"{k} {args[k]}" for k in ("optimizer", "lr", "batch_size", "epochs", "seed") if k in args]
    if run:
        lines.append("- run: " + ", ".join(run))
    lines += ["", "## Metrics", ""]
    metrics = training.get("metrics") or {}
    if metrics:
        lines += ["| metric | value |", "| --- | --- |"]
        lines += [
            f"| {k} | {v:.4g} |" if isinstance(v, (int, float)) else f"| {k} | {v} |"
            for k, v in sorted(metrics.items())
        ]
    else:
        lines.append("The checkpoint holds no validation metrics.")
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from rt1.model import load_pretrained",
        "from rt1.policy import RT1Policy",
        "",
        "model, config, exported = load_pretrained(DIR)",
        "policy = RT1Policy(model)",
        "```",
        "",
        "or serve it to a robot: `python -m rt1.serve --model DIR`. `config.json` gives the image "
        "preprocessing, the action tokenizer (order and bounds) and the instruction embedding.",
        "",
    ]
    return "\n".join(lines)


def _check_out(out: Path, overwrite: bool) -> Path:
    """The directory to write (a symlink's target); refuses `.`, `..`, the working directory or one above it,
    and replacing anything but an export of ours that holds only the files an export writes."""
    from rt1.model.pretrained import (
        CARD_NAME,
        CONFIG_NAME,
        PRETRAINED_FORMAT,
        PRETRAINED_FORMAT_VERSION,
        WEIGHTS_NAME,
    )

    given = out
    if out.is_symlink():  # replace what the link points to, never the link itself
        out = out.resolve()
    resolved, cwd = out.resolve(), Path.cwd().resolve()
    if given.name in ("", ".", "..") or resolved == cwd or resolved in cwd.parents:
        raise ExportError(f"--out {given} is the working directory or above it: name a new model directory")
    if not os.path.lexists(out):
        return out
    if not overwrite:
        raise ExportError(f"{given} exists; pass --overwrite to replace it")
    refuse = f"{given} exists and is not an exported model directory: refusing to replace it"
    if not out.is_dir():
        raise ExportError(refuse)
    names = {p.name for p in out.iterdir()}
    if not names:
        return out
    try:
        config = json.loads((out / CONFIG_NAME).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        raise ExportError(f"{refuse} (no readable {CONFIG_NAME})") from None
    if not isinstance(config, dict) or (config.get("format"), config.get("format_version")) != (
        PRETRAINED_FORMAT,
        PRETRAINED_FORMAT_VERSION,
    ):
        raise ExportError(f"{refuse} ({CONFIG_NAME} is not an {PRETRAINED_FORMAT} config)")
    others = sorted(names - {WEIGHTS_NAME, CONFIG_NAME, CARD_NAME})
    if others:
        raise ExportError(f"{refuse} (it also holds {others[0]!r}, which an export does not write)")
    return out


def export(
    checkpoint: Path,
    out: Path,
    *,
    embedding_source: str = "universal-sentence-encoder",
    jpeg_quality: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the model directory `out` from a training checkpoint; returns `out`."""
    from safetensors.torch import save_file

    from rt1 import io
    from rt1.data.images import JPEG_QUALITY
    from rt1.model import build_model, read_checkpoint
    from rt1.model.pretrained import CARD_NAME, CONFIG_NAME, EMBEDDING_SOURCES, WEIGHTS_NAME
    from rt1.model_families import model_config_from_dict

    checkpoint, out = Path(checkpoint), Path(out)
    if embedding_source not in EMBEDDING_SOURCES:
        raise ExportError(
            f"--embedding-source must be one of {', '.join(EMBEDDING_SOURCES)}, got {embedding_source!r}"
        )
    jpeg_quality = JPEG_QUALITY if jpeg_quality is None else jpeg_quality
    if not isinstance(jpeg_quality, int) or not 1 <= jpeg_quality <= 100:
        raise ExportError(f"--jpeg-quality must be 1..100, got {jpeg_quality!r}")
    out = _check_out(out, overwrite)
    if checkpoint.is_dir():
        raise ExportError(f"{checkpoint} is a directory: --checkpoint takes a checkpoint-{{epoch}}.pt file")
    state = read_checkpoint(checkpoint)
    try:  # the weights fit their config before anything is written
        model_config = model_config_from_dict(state["model_config"])
        model = build_model(model_config)
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ExportError(f"{checkpoint}: model weights or model_config unusable ({one_line(e)})") from None
    # The checkpoint's own tensors, byte for byte (safetensors needs contiguous, unshared ones).
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state["model"].items()}
    config = build_config(state, model_config, checkpoint, embedding_source, jpeg_quality)
    card = model_card(config, model.num_parameters())

    out.parent.mkdir(parents=True, exist_ok=True)
    io.check_free_space(out.parent, sum(t.numel() * t.element_size() for t in tensors.values()), out.name)
    tmp = out.with_name(f".{out.name}{io.TEMP_MARKER}{os.getpid()}")
    old = out.with_name(f".{out.name}.replaced-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save_file(tensors, tmp / WEIGHTS_NAME, metadata={"format": "pt"})  # "pt": what transformers expects
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / CARD_NAME).write_text(card)
        for name in (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME):
            os.chmod(tmp / name, 0o644)  # safetensors creates its file owner-only; the folder is for sharing
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        if out.exists():  # --overwrite: a directory cannot be renamed onto a non-empty one
            os.replace(out, old)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    from rt1.model.pretrained import EMBEDDING_SOURCES

    parser = argparse.ArgumentParser(
        prog="python -m rt1.export",
        description="Export a training checkpoint as DIR/model.safetensors + config.json + README.md (the "
        "Hugging Face layout; no pickle), loadable with rt1.model.load_pretrained(DIR).",
    )
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="checkpoint-{epoch}.pt from train_ddp.py"
    )
    parser.add_argument("--out", type=Path, required=True, help="model directory to write (must not exist)")
    parser.add_argument(
        "--embedding-source",
        choices=EMBEDDING_SOURCES,
        default=EMBEDDING_SOURCES[0],
        help="where the 512-d instruction embeddings come from: universal-sentence-encoder "
        "(fractal20220817_data; default) or mini-fractal (the bundled dataset: the server "
        "then also takes instruction text)",
    )
    parser.add_argument(
        "--jpeg-quality",
        type=int,
        default=None,
        help="stage 2's --jpeg-quality of the training data (default 90)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing export (a directory holding only an export's files; anything else is refused)",
    )
    args = parser.parse_args(argv)

    def run(_) -> int:
        out = export(
            args.checkpoint,
            args.out,
            embedding_source=args.embedding_source,
            jpeg_quality=args.jpeg_quality,
            overwrite=args.overwrite,
        )
        print(f"wrote {out}/ (model.safetensors, config.json, README.md)")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
