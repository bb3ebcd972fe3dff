"""The run directory (--save-dir): one run at a time holds its lock, the checkpoint to resume is found in it,
and a checkpoint is checked to fit the run before anything is built from it.

    take_save_dir      rank 0 creates the directory and takes train.lock (a stale lock is taken over)
    find_resume        --resume, else the newest checkpoint-*.pt; the same path on every rank
    check_resume_fits  same model config (else ResumeError), changed training settings warned about
    check_position     a mid-epoch checkpoint resumes only at the same steps per epoch
    --init-from        a new run from a model directory's or checkpoint's weights (`load_weights`): the same
                       network family (checked before anything is written) and the same tensor shapes; the
                       weights' action order (GoogleRT1Config.action_order, a fact of the weights) is the run's
"""

from __future__ import annotations

import logging
from pathlib import Path

from rt1.config import TrainConfig, retired_preset
from rt1.errors import EXIT_ERROR, EXIT_USAGE, RT1Error, one_line
from rt1.io import DirectoryLock, DirectoryLockedError, outermost_missing, remove_empty_dirs
from rt1.model_families import ModelConfig, model_config_from_dict
from rt1.train import checkpoint as ckpt
from rt1.train import distributed as D
from rt1.train.checkpoint import TrainState

LOCK_FILE = "train.lock"
# Fields of TrainConfig that may change between a run and its resumption without a warning.
_RESUME_FREE_FIELDS = {
    "epochs",
    "max_steps",
    "resume",
    "num_workers",
    "log_every",
    "val_every",
    "progress",
    "tensorboard",
    "dist_timeout",
    "keep_checkpoints",
    "device",
    "data_dir",
    "train_index",
    "val_index",
    "save_dir",
    "compile",
    "save_every",
    "model_overrides",
    "init_from",  # a resume is a resume: the checkpoint's weights, whatever --init-from says
}  # a changed model is refused by the model config check itself


class ResumeError(RT1Error, RuntimeError):
    """A checkpoint does not fit this run (different model, world size mismatch that matters...)."""

    exit_code = EXIT_ERROR


class InitError(RT1Error, RuntimeError):
    """--init-from's weights do not fit this run (another network, other shapes); the message names them."""

    exit_code = EXIT_USAGE


class SaveDirInUseError(RT1Error, RuntimeError):
    """Another live run holds --save-dir's lock; the message names it (host, PID, command)."""

    exit_code = EXIT_USAGE


def take_save_dir(cfg: TrainConfig) -> tuple[DirectoryLock | None, Path | None]:
    """Collective: rank 0 creates --save-dir if needed and takes its lock before any rank touches it.

    -> (the lock on rank 0, None elsewhere; the outermost directory this run created, or None). Every rank raises
    SaveDirInUseError when another live run holds the lock. A stale lock (its process is dead) is taken
    over with a warning. Leftover temporaries of killed writes are removed only once the lock is ours.
    """
    lock, created, outcome = None, None, None
    if D.is_main_process():
        created = outermost_missing(cfg.save_dir)
        try:
            cfg.save_dir.mkdir(parents=True, exist_ok=True)
            lock = DirectoryLock(cfg.save_dir, LOCK_FILE, what="training run")
            stale = lock.acquire()
            if stale is not None:
                logging.getLogger("rt1.train").warning(
                    f"took over the stale lock {lock.path} of a run that is gone ({stale})"
                )
            ckpt.remove_stale_temporaries(cfg.save_dir)
        except (DirectoryLockedError, OSError) as e:
            outcome = one_line(e) if isinstance(e, DirectoryLockedError) else f"{cfg.save_dir}: {one_line(e)}"
            if lock is not None:
                lock.release()
            if created is not None:
                remove_empty_dirs(cfg.save_dir, created)
            lock = None
    outcome = D.broadcast_object(outcome)
    if outcome is not None:
        raise SaveDirInUseError(outcome)
    return lock, created


def find_resume(cfg: TrainConfig) -> Path | None:
    """The checkpoint to resume from (decided on rank 0, the same path on every rank)."""
    path = None
    if D.is_main_process():
        latest = cfg.resume if cfg.resume is not None else ckpt.latest_checkpoint(cfg.save_dir)
        path = str(latest) if latest is not None else None
    path = D.broadcast_object(path)
    if path is not None and not Path(path).is_file():
        raise ResumeError(
            f"rank {D.get_rank()} cannot see checkpoint {path}: resuming a multi-node run needs "
            "--save-dir (or --resume) on a filesystem every node shares"
        )
    return Path(path) if path is not None else None


def check_resume_fits(contents: dict, path: Path, cfg: TrainConfig, model_config: ModelConfig, log) -> None:
    saved_type = model_config_from_dict(contents["model_config"]).model_type
    retired = retired_preset(contents.get("train_args", {}), saved_type)
    if retired:
        raise ResumeError(f"{path} {retired}")
    saved, current = contents["model_config"], model_config.to_dict()
    diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if diff:
        details = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}" for k in diff)
        raise ResumeError(
            f"{path} was trained with a different model config ({details}); use another --save-dir "
            "or the same --preset/--cond-drop-prob"
        )
    old, new = contents.get("train_args", {}), cfg.to_dict()
    changed = sorted(
        k for k in cfg.field_names() if k not in _RESUME_FREE_FIELDS and k in old and old[k] != new[k]
    )
    if changed:
        log.warning(
            "resuming with changed settings: " + ", ".join(f"{k} {old[k]!r} -> {new[k]!r}" for k in changed)
        )


def load_resume(cfg: TrainConfig) -> tuple[TrainConfig, Path | None, dict | None]:
    """(the run's config, the checkpoint to resume, its contents), or (cfg, None, None) for a fresh run; checked
    before anything is written. The config takes the action order of the weights it starts from (the
    checkpoint's, else --init-from's) unless --model.action-order says it."""
    path = find_resume(cfg)
    if path is None:
        return (cfg if cfg.init_from is None else _with_order_of(cfg, init_source_config(cfg))), None, None
    contents = ckpt.load_checkpoint(path)
    check_same_optimizer(contents, path, cfg)
    return _with_order_of(cfg, model_config_from_dict(contents["model_config"])), path, contents


def init_source_config(cfg: TrainConfig) -> ModelConfig:
    """--init-from's model config; another network family than the run's is refused in one line."""
    from rt1.model.load import read_checkpoint
    from rt1.model.pretrained import model_config_of, read_pretrained_config
    from rt1.model_families import family_name

    source = cfg.init_from
    config = model_config_of(read_pretrained_config(source) if source.is_dir() else read_checkpoint(source))
    if config.model_type != cfg.model_config.model_type:
        raise InitError(
            f"--init-from {source} is {family_name(config)}, --preset {cfg.preset} builds "
            f"{family_name(cfg.model_config)}: start from weights of the preset's network"
        )
    return config


def _with_order_of(cfg: TrainConfig, weights: ModelConfig) -> TrainConfig:
    order, current = getattr(weights, "action_order", None), getattr(cfg.model_config, "action_order", None)
    if order is None or current is None or "action_order" in cfg.model_overrides or order == current:
        return cfg
    return cfg.replace(model_overrides={**cfg.model_overrides, "action_order": tuple(order)})


def check_same_optimizer(contents: dict, path: Path, cfg: TrainConfig) -> None:
    """A checkpoint's optimizer state fits only the optimizer that wrote it: another --optimizer is refused
    before anything is written (starting it fresh would silently drop the momentum the run had built)."""
    saved = contents.get("train_args", {}).get("optimizer")
    if saved is not None and saved != cfg.optimizer:
        raise ResumeError(
            f"{path} was trained with --optimizer {saved}, this run asks for --optimizer "
            f"{cfg.optimizer}: its optimizer state cannot be resumed by another optimizer; resume with "
            f"--optimizer {saved}, or start a new --save-dir"
        )


def load_weights(model, contents: dict | None, path: Path | None, init_from: Path | None = None, log=None):
    """`model` with the checkpoint's weights, else --init-from's, else as it is; ResumeError when they do not fit."""
    if contents is None and init_from is not None and path is None:
        return _init_weights(model, init_from, log)
    if contents is None:
        return model
    try:
        model.load_state_dict(contents["model"])
    except RuntimeError as e:
        raise ResumeError(
            f"{path}: its weights do not fit the current RT1 code ({one_line(e)}); resume with the "
            "code that wrote it, or start a new --save-dir"
        ) from None
    return model


def _init_weights(model, source: Path, log):
    """The weights of a model directory or checkpoint, tensor by tensor the shapes of this run's model."""
    from rt1.model import load_model

    weights, config, _ = load_model(source)
    ours, theirs = model.state_dict(), weights.state_dict()
    bad = next((k for k in ours if k not in theirs or theirs[k].shape != ours[k].shape), None)
    if bad is not None or set(theirs) - set(ours):
        mine, other = model.config.to_dict(), config.to_dict()
        fields = [
            f"{k} {other.get(k)!r} vs {mine.get(k)!r}" for k in sorted(mine) if other.get(k) != mine.get(k)
        ]
        hint = (
            "; the training data's action tokens have 256 bins (rt1.actions)"
            if config.num_bins != 256
            else ""
        )
        raise InitError(
            f"--init-from {source}: tensor {bad} is {tuple(theirs[bad].shape) if bad in theirs else 'missing'}, "
            f"this run's model needs {tuple(ours[bad].shape) if bad else '-'} (model config, source vs run: "
            f"{', '.join(fields) or 'equal'}){hint}; match it with --model.FIELD"
        )
    model.load_state_dict(theirs)
    if log is not None:
        log.info(f"initialised the model from {source} (weights only: optimizer and lr schedule start fresh)")
    return model


def check_position(contents: dict, path: Path, state: TrainState, steps_per_epoch: int) -> None:
    """A checkpoint written mid-epoch resumes only when this run has the same steps per epoch."""
    saved = int(contents.get("steps_per_epoch", steps_per_epoch))
    if saved != steps_per_epoch and not state.epoch_complete:
        raise ResumeError(
            f"{path} stopped in the middle of epoch {state.epoch} with {saved} steps per "
            f"epoch; this run has {steps_per_epoch} (other data, batch size, grad accumulation "
            "or number of processes), so the position in the epoch cannot be resumed: resume with "
            "the same settings, or from an end-of-epoch checkpoint"
        )


def report_resume(
    log, contents: dict, path: Path, state: TrainState, steps_per_epoch: int, total_steps: int, lrf: float
) -> None:
    saved_spe = contents.get("steps_per_epoch", steps_per_epoch)
    if int(contents.get("total_steps", total_steps)) != total_steps:
        log.warning(
            f"the lr schedule now spans {total_steps} steps (checkpoint: {contents['total_steps']}; "
            f"{steps_per_epoch} steps/epoch now, {saved_spe} in the checkpoint): the lr continues from step "
            f"{state.global_step} of the new schedule and reaches {lrf:g} x lr at step {total_steps}"
        )
    log.info(
        f"resumed from {path} at step {state.global_step} (epoch {state.epoch}, step {state.step_in_epoch} "
        "of it)"
    )


__all__ = [
    "load_weights",
    "report_resume",
    "LOCK_FILE",
    "ResumeError",
    "InitError",
    "init_source_config",
    "SaveDirInUseError",
    "take_save_dir",
    "find_resume",
    "load_resume",
    "check_same_optimizer",
    "check_resume_fits",
    "check_position",
]
