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
import sys
from pathlib import Path

from rt1.errors import RT1Error, one_line, run_cli
from rt1.model.model_dir import base_config, check_output_dir, model_card, write_model_dir


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


# TrainConfig's path options: an upload-ready config names their file or folder, never the local path.
PATH_ARGS = ("data_dir", "train_index", "val_index", "save_dir", "resume", "init_from")


def _by_name(train_args: dict) -> dict:
    return {k: Path(v).name if k in PATH_ARGS and isinstance(v, str) else v for k, v in train_args.items()}


def build_config(
    state: dict, model_config, checkpoint: Path, embedding_source: str, jpeg_quality: int
) -> dict:
    """The config.json of an export (format in rt1.model.pretrained)."""
    from rt1.data.images import DATASET_JPEG_QUALITY, RESIZE_DESCRIPTION
    from rt1.rlds_spec import IMAGE_SHAPE

    train_args = _by_name(_plain(dict(state.get("train_args") or {})))
    images = {
        "input": f"RLDS observation/image: uint8 (H, W, 3) RGB; the camera's is {list(IMAGE_SHAPE)}",
        "dataset_jpeg_quality": DATASET_JPEG_QUALITY,
        "resize": RESIZE_DESCRIPTION,
        "jpeg_quality": int(jpeg_quality),
        "steps": "JPEG at dataset_jpeg_quality, squash-resize to image_size, JPEG at jpeg_quality, decode "
        "(rt1.data.images.training_frame), then what the network does (formula)",
    }
    training = {
        "train_args": train_args,
        "epoch": _plain(state.get("epoch")),
        "global_step": _plain(state.get("global_step")),
        "epoch_complete": _plain(state.get("epoch_complete")),
        "metrics": _plain(dict(state.get("metrics") or {})),
    }
    return base_config(
        model_config,
        preset=_preset_name(train_args, model_config),
        image_preprocessing=images,
        embedding_source=embedding_source,
        training=training,
        source=Path(checkpoint).name,
    )


def export(
    checkpoint: Path,
    out: Path,
    *,
    embedding_source: str = "universal-sentence-encoder",
    jpeg_quality: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the model directory `out` from a training checkpoint; returns `out`."""
    from rt1.data.images import JPEG_QUALITY
    from rt1.model import build_model, read_checkpoint
    from rt1.model.pretrained import EMBEDDING_SOURCES
    from rt1.model_families import model_config_from_dict

    checkpoint, out = Path(checkpoint), Path(out)
    if embedding_source not in EMBEDDING_SOURCES:
        raise ExportError(
            f"--embedding-source must be one of {', '.join(EMBEDDING_SOURCES)}, got {embedding_source!r}"
        )
    jpeg_quality = JPEG_QUALITY if jpeg_quality is None else jpeg_quality
    if not isinstance(jpeg_quality, int) or not 1 <= jpeg_quality <= 100:
        raise ExportError(f"--jpeg-quality must be 1..100, got {jpeg_quality!r}")
    out = check_output_dir(out, overwrite, ExportError)
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

    return write_model_dir(out, tensors, config, card)


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
