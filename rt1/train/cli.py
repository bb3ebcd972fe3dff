"""The command line of train_ddp.py, generated from `TrainConfig`'s fields (flag, group and help in metadata).

Each field becomes `--field-name` (or its metadata's `flag`); booleans get `--x/--no-x`; the default shown
in the help is the field's value, or each preset's for the per-preset fields. Every overridable field of a
model family (`RT1Config`, `GoogleRT1Config`; the preset says which applies) becomes `--model.field-name` (a tuple as comma-separated values, e.g. `--model.depth 1,1`), replacing
the preset's value for this run. `config_from_args` builds the TrainConfig and names the option (not the
field) in its errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

from rt1.config import MODEL_OVERRIDABLE, PRESETS, ConfigError, TrainConfig
from rt1.model_families import MODEL_FAMILIES
from rt1.train.paths import check_paths

GROUPS = ("data", "model", "optimisation", "output", "processes")
_TYPES = {"Path": Path, "int": int, "float": float, "str": str}


def option_flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _default_text(f: dataclasses.Field) -> str:
    if f.metadata.get("per_preset"):
        return ", ".join(f"{name} {preset.train[f.name]}" for name, preset in PRESETS.items())
    if isinstance(f.default, bool):
        return "on" if f.default else "off"
    return str(f.default)


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_ddp.py",
        description=(
            "Train RT-1 on preprocessed windows (DataPreprocess_batch_*.py + data_emerge.py output), in one process "
            "or data-parallel: `python train_ddp.py ...`, `torchrun --nproc_per_node=N train_ddp.py ...` (also "
            "multi-node) or `python -m torch.distributed.launch --nproc_per_node=N --use_env train_ddp.py ...`. "
            "NCCL on CUDA, gloo on CPU. Writes {save-dir}/checkpoint-{epoch}.pt every epoch (and every --save-every "
            "steps; the last --keep-checkpoints kept), metrics.jsonl and TensorBoard events. Rerunning the same "
            "command resumes from the newest checkpoint in --save-dir. One run at a time per --save-dir (the lock "
            "file train.lock names it)."
        ),
        epilog=(
            "SIGTERM or SIGINT (Ctrl-C): every process stops after the current step and a checkpoint of that step "
            "is saved (Ctrl-C twice stops at once). Exit status: 0 done; 1 error; 2 bad arguments, or "
            "--save-dir in use by another run; 3 non-finite loss (the last good checkpoint is kept); 130 "
            "interrupted (SIGINT); 143 terminated (SIGTERM). No partial checkpoint is ever left under a final "
            "name."
        ),
    )
    groups = {name: p.add_argument_group(name) for name in GROUPS}
    _add_train_options(groups)
    _add_model_options(groups["model"])
    # torch.distributed.launch without --use_env passes --local-rank; LOCAL_RANK in the environment wins.
    groups["processes"].add_argument(
        "--local-rank", "--local_rank", dest="local_rank", type=int, default=None, help=argparse.SUPPRESS
    )
    return p


def _add_train_options(groups: dict) -> None:
    """One option per TrainConfig field (its help metadata, in its group), but those marked cli=False."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        if meta.get("cli") is False:
            continue
        shown = f.default is not None or meta.get("per_preset")  # a None default is explained in the help
        help_text = f"{meta['help']} (default: {_default_text(f)})" if shown else meta["help"]
        kwargs: dict = {"dest": f.name, "help": help_text}
        if bool in (hints[f.name], *typing.get_args(hints[f.name])):
            kwargs.update(action=argparse.BooleanOptionalAction, default=f.default)
        else:
            base = next(t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if t is not type(None))
            choices = sorted(PRESETS) if f.name == "preset" else meta.get("choices")
            kwargs.update(
                type=base,
                choices=choices,
                default=None if meta.get("per_preset") else f.default,
                required=meta.get("required", False),
            )
            if meta.get("required"):
                kwargs["help"] = meta["help"]
        groups[meta["group"]].add_argument(option_flag(f), **kwargs)


def _add_model_options(group) -> None:
    """--model.NAME for every model field a run may override (MODEL_OVERRIDABLE)."""
    model_hints = {}  # the union of the families' fields (a name shared by two has one type in both)
    for family in reversed(MODEL_FAMILIES.values()):
        model_hints.update(
            {name: (family.__name__, kind) for name, kind in typing.get_type_hints(family).items()}
        )
    for name in MODEL_OVERRIDABLE:
        owner, kind = model_hints[name]
        tuple_of = typing.get_args(kind)[0] if typing.get_origin(kind) is tuple else None
        parse = kind if tuple_of is None else _int_tuple if tuple_of is int else _names
        group.add_argument(
            _model_flag(name),
            dest=f"model.{name}",
            type=parse,
            default=None,
            metavar=name.upper(),
            help=f"{owner}.{name} for this run (default: the preset's)",
        )


def _model_flag(name: str) -> str:
    return "--model." + name.replace("_", "-")


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(","))


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from parsed arguments (per-preset fields left unset take the preset's). Raises ConfigError."""
    values = {name: getattr(args, name) for name in TrainConfig.field_names() if hasattr(args, name)}
    values["model_overrides"] = {
        name: value
        for name in MODEL_OVERRIDABLE
        if (value := getattr(args, f"model.{name}", None)) is not None
    }
    try:
        cfg = TrainConfig(**values)
        check_paths(cfg)  # where the run starts: a wrong path is a usage error, like a wrong value
        return cfg
    except ConfigError as e:
        message = str(e)
        for name in MODEL_OVERRIDABLE:
            for family in MODEL_FAMILIES.values():
                message = message.replace(f"{family.__name__}.{name} ", f"{_model_flag(name)} ")
        for f in dataclasses.fields(TrainConfig):  # name the option the user typed, not the field
            message = message.replace(f"TrainConfig.{f.name} ", f"{option_flag(f)} ")
        raise ConfigError(message) from None


__all__ = ["build_arg_parser", "config_from_args", "option_flag"]
