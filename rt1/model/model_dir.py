"""A model directory in the Hugging Face layout (`rt1.model.pretrained` documents it): its config.json, its
model card and the atomic write of the three files. `python -m rt1.export` (a training checkpoint) and
`python -m rt1.model.convert_google` (Google's TF checkpoint) both write through here.

    check_output_dir(out, overwrite, error)   refuse an existing OUT (unless overwrite, and only a model directory)
    base_config(model_config, ...)            config.json of a model
    model_card(config, num_parameters)        README.md
    write_model_dir(out, tensors, config, card)   built under a temporary name next to OUT, renamed when complete
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from rt1.actions import ActionTokenizer
from rt1.model_families import architecture

EXPORT_NOTE = "exported by python -m rt1.export"


def check_output_dir(out: Path, overwrite: bool, error: type[Exception]) -> Path:
    """The directory to write for `--out OUT` (a symlink's target); raises `error` for `.`, `..`, the working
    directory or one above it, an existing OUT without overwrite, and (with overwrite) anything but an empty
    folder or a model directory of ours that holds only the files one holds (never a user's folder that merely
    has a config.json)."""
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
        raise error(f"--out {given} is the working directory or above it: name a new model directory")
    if not os.path.lexists(out):
        return out
    if not overwrite:
        raise error(f"{given} exists; pass --overwrite to replace it")
    refuse = f"{given} exists and is not an exported model directory: refusing to replace it"
    if not out.is_dir():
        raise error(refuse)
    names = {p.name for p in out.iterdir()}
    if not names:
        return out
    try:
        config = json.loads((out / CONFIG_NAME).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        raise error(f"{refuse} (no readable {CONFIG_NAME})") from None
    if not isinstance(config, dict) or (config.get("format"), config.get("format_version")) != (
        PRETRAINED_FORMAT,
        PRETRAINED_FORMAT_VERSION,
    ):
        raise error(f"{refuse} ({CONFIG_NAME} is not an {PRETRAINED_FORMAT} config)")
    others = sorted(names - {WEIGHTS_NAME, CONFIG_NAME, CARD_NAME})
    if others:
        raise error(f"{refuse} (it also holds {others[0]!r}, which an export does not write)")
    return out


def base_config(
    model_config,
    *,
    preset: str | None,
    image_preprocessing: dict,
    embedding_source: str,
    training: dict,
    source: str,
) -> dict:
    """The config.json of a model directory (format in rt1.model.pretrained)."""
    from rt1.model.pretrained import PRETRAINED_FORMAT, PRETRAINED_FORMAT_VERSION, tokenizer_spec

    return {
        "format": PRETRAINED_FORMAT,
        "format_version": PRETRAINED_FORMAT_VERSION,
        "model_type": "rt1",
        "preset": preset,
        "model_config": model_config.to_dict(),
        "num_frames": model_config.num_frames,
        "action_tokenizer": tokenizer_spec(ActionTokenizer.of(model_config)),
        "image_preprocessing": {
            "image_size": list(model_config.frame_size),
            **image_preprocessing,
            **model_config.pixel_processing(),
        },
        "instruction_embedding": {"dim": model_config.text_embed_dim, "source": embedding_source},
        "training": training,
        "source_checkpoint": source,
    }


def model_card(config: dict, num_parameters: int, note: str = EXPORT_NOTE) -> str:
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
        f"{note} from `{config['source_checkpoint']}`.",
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
    lines += ["", "## Metrics", ""] + _metrics_table(training.get("metrics") or {})
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


def _metrics_table(metrics: dict) -> list[str]:
    """The model card's metrics as a Markdown table (or a line saying there are none)."""
    if not metrics:
        return ["The checkpoint holds no validation metrics."]
    rows = [
        f"| {k} | {v:.4g} |" if isinstance(v, (int, float)) else f"| {k} | {v} |"
        for k, v in sorted(metrics.items())
    ]
    return ["| metric | value |", "| --- | --- |", *rows]


def write_model_dir(out: Path, tensors: dict, config: dict, card: str) -> Path:
    """DIR/model.safetensors + config.json + README.md, under a temporary name renamed onto OUT when complete."""
    from safetensors.torch import save_file

    from rt1 import io
    from rt1.model.pretrained import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME

    out = Path(out)
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


__all__ = ["EXPORT_NOTE", "check_output_dir", "base_config", "model_card", "write_model_dir"]
