"""The training loop: `train(cfg)` runs one training job in this process (one rank of it under DDP).

    run dir   run_dir: the save-dir lock, the checkpoint to resume, whether it fits this run
    data      loaders.RunData: RT1Dataset(train_index) via EpochSampler/DistributedSampler (uint8 frames)
    model     build_model(cfg.model_config) -> distributed.wrap_model (SyncBatchNorm, DDP, torch.compile)
    schedule  optim: lr x world_size, per-step cosine to lrf x that (resume: rebuilt at the saved step)
    step      step.train_step; before the update every rank agrees on the loss, a non-finite loss and a
              stop signal in one collective (stopping.agree)
    epoch     validation (step.evaluate, every val_every epochs and the last); checkpoint-{epoch}.pt
    stop      at --epochs, --max-steps (a resumable mid-epoch checkpoint), or SIGTERM/SIGINT at a step boundary

A resume restores every piece of the run (checkpoint.py) and skips the epoch's finished steps, so the run
continues as if it had never stopped. `train` always releases the lock, destroys the process group and
closes its files.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rt1.config import TrainConfig
from rt1.io import remove_empty_dirs
from rt1.model import build_model
from rt1.train import checkpoint as ckpt
from rt1.train import distributed as D
from rt1.train.checkpoint import TrainState, seed_everything
from rt1.train.loaders import RunData, TimedBatches, TrainSetupError
from rt1.train.optim import Optimisation, schedule_length
from rt1.train.paths import check_paths
from rt1.train.run_dir import (
    ResumeError,
    SaveDirInUseError,
    check_position,
    check_resume_fits,
    load_resume,
    load_weights,
    report_resume,
    take_save_dir,
)
from rt1.train.runlog import RunLog, StepReporter, report_validation, setup_message
from rt1.train.step import StepSettings, evaluate, set_train_mode, train_step
from rt1.train.stopping import (
    NonFiniteLossError,
    StoppedBySignal,
    acknowledge_stop,
    agree,
    signal_name,
    signals_deferred,
)


@dataclass
class TrainResult:
    """What `train` returns (on every rank)."""

    save_dir: Path
    global_step: int
    epoch: int
    epoch_complete: bool
    last_checkpoint: Path | None
    val_metrics: dict = field(default_factory=dict)
    stopped_by: str = "epochs"  # epochs | max_steps | already_done


def train(cfg: TrainConfig, *, local_rank: int | None = None) -> TrainResult:
    """Run the training job described by `cfg` in this process (the process group too, when a launcher set
    RANK/WORLD_SIZE); returns when it ends on every rank. ConfigError (before anything is written) when a
    path of `cfg` cannot start a run (`paths.check_paths`)."""
    check_paths(cfg)
    info = D.init_distributed(cfg.device, cfg.dist_timeout, local_rank)
    lock, created, started = None, None, False
    try:
        lock, created = take_save_dir(cfg)
        cfg, resume_path, contents = load_resume(cfg)  # cfg: the weights' action order (run_dir)
        with D.lost_peers_reported(info), Trainer(cfg, info, resume_path, contents) as trainer:
            started = True
            return trainer.run()
    finally:
        if lock is not None:
            lock.release()
            if created is not None and not started:  # refused during set-up: remove the directories it made
                remove_empty_dirs(cfg.save_dir, created)
        D.cleanup()


class Trainer:
    """One run on this rank: built once from the config (and a checkpoint), then `run()`."""

    def __init__(
        self, cfg: TrainConfig, info: D.DistInfo, resume_path: Path | None, contents: dict | None
    ) -> None:
        self.cfg, self.device = cfg, info.device
        self.log = RunLog.open(
            cfg.save_dir,
            resume_step=None if contents is None else int(contents["global_step"]),
            tensorboard=cfg.tensorboard,
        )
        self.data: RunData | None = None
        try:
            self._build(info, resume_path, contents)
        except BaseException:
            self.__exit__()
            raise

    def _build(self, info: D.DistInfo, resume_path: Path | None, contents: dict | None) -> None:
        cfg, model_config = self.cfg, self.cfg.model_config
        if contents is not None:
            check_resume_fits(contents, resume_path, cfg, model_config, self.log)
        # Data first, so a wrong image size fails before the model is built.
        self.data = RunData.open(
            cfg, model_config, info.rank, info.world_size, pin_memory=self.device.type == "cuda"
        )
        resumed = ckpt.train_state_of(contents) if contents is not None else TrainState()
        total_steps = schedule_length(resumed, self.data.steps_per_epoch, cfg.epochs, cfg.max_steps)
        seed_everything(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
        model = load_weights(build_model(model_config), contents, resume_path, cfg.init_from, self.log)
        # Parameters without a gradient (the MaxViT's null embedding without condition dropout): tell DDP.
        self.model, self.forward, self.no_sync = D.wrap_model(
            model,
            info,
            sync_bn=cfg.sync_bn,
            find_unused_parameters=not model.trains_every_parameter,
            compile=cfg.compile,
            log=self.log,
        )
        self.opt = Optimisation.build(
            self.model,
            cfg,
            info.world_size,
            self.device,
            total_steps,
            contents,
            step=resumed.global_step,
            log=self.log,
        )
        self.state, self.last_save = resumed, (None, None)  # (the last checkpoint, the step it holds)
        tokens_per_window = model.config.num_frames * model.config.num_actions
        self.reporter = StepReporter(self.log, cfg, self.data.steps_per_epoch, total_steps, tokens_per_window)
        seed_everything(cfg.seed * 1009 + info.rank + 1)  # per-rank stream (condition dropout)
        if contents is not None:
            self._resume(info, resume_path, contents)
        self.log.info(setup_message(cfg, self.model, info, self.data, self.opt.lr, total_steps))

    def _resume(self, info: D.DistInfo, resume_path: Path, contents: dict) -> None:
        """Position the run at the checkpoint's step: check it, restore every rank's RNG, report the resume."""
        cfg, resumed, steps_per_epoch = self.cfg, self.state, self.data.steps_per_epoch
        check_position(contents, resume_path, resumed, steps_per_epoch)
        ckpt.restore_rng(
            contents,
            info.rank,
            info.world_size,
            log=self.log,
            reseed=cfg.seed * 1009 + info.rank + 1 + resumed.global_step,
        )
        report_resume(
            self.log, contents, resume_path, resumed, steps_per_epoch, self.opt.total_steps, cfg.lrf
        )
        self.last_save = (resume_path, resumed.global_step)
        if resumed.epoch_complete:
            resumed.start_next_epoch()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc) -> None:
        if self.data is not None:
            self.data.close()
        self.log.close()

    # ---- the loop -----------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        cfg, state, steps_per_epoch = self.cfg, self.state, self.data.steps_per_epoch
        if (cfg.max_steps is not None and state.global_step >= cfg.max_steps) or state.epoch > cfg.epochs:
            self.log.info(
                f"nothing to do: the run in {cfg.save_dir} already reached step {state.global_step}"
            )
            done = state.step_in_epoch == 0 and state.epoch > 1  # counters point at the epoch after the last
            return self._result("already_done", epoch=state.epoch - 1 if done else None)
        self.log.start()
        stopped_by = "epochs"
        with signals_deferred():  # SIGTERM/SIGINT: stop at the next step boundary, with a checkpoint
            while state.epoch <= cfg.epochs:
                self._stop_if(agree(None, self.device).stop)
                self._stop_if(self._train_epoch())
                finished_epoch = state.step_in_epoch >= steps_per_epoch
                hit_max = self._at_max_steps()
                if finished_epoch or hit_max:
                    state.epoch_complete = finished_epoch
                    if self.data.val_loader is not None and (
                        state.epoch % cfg.val_every == 0 or state.epoch == cfg.epochs or hit_max
                    ):
                        state.metrics = self._validate()
                    self._save()
                if hit_max:
                    stopped_by = "max_steps"
                    self.log.record(
                        "stop",
                        step=state.global_step,
                        epoch=state.epoch,
                        reason=f"--max-steps {cfg.max_steps}",
                    )
                    self.log.info(f"stopped at --max-steps {cfg.max_steps}")
                    break
                state.start_next_epoch()
            else:  # the loop ran out: the counters point at the epoch after the last one
                state.epoch, state.epoch_complete = cfg.epochs, True
            acknowledge_stop()  # a signal during the very last save: the run is complete anyway
        return self._result(stopped_by)

    def _at_max_steps(self) -> bool:
        return self.cfg.max_steps is not None and self.state.global_step >= self.cfg.max_steps

    def _train_epoch(self) -> int | None:
        """Train the rest of the current epoch; returns the stop signal every rank agreed on, if any."""
        cfg, state, data = self.cfg, self.state, self.data
        skip_batches = state.step_in_epoch * cfg.grad_accum
        data.train_sampler.set_epoch(state.epoch, skip=skip_batches * cfg.batch_size)
        set_train_mode(self.model, cfg.freeze_bn)
        steps_left = data.steps_per_epoch - state.step_in_epoch
        if cfg.max_steps is not None:
            steps_left = min(steps_left, cfg.max_steps - state.global_step)
        if steps_left <= 0:
            return None
        with self.reporter.epoch(state):
            stop = self._train_steps(steps_left, data.batches_per_epoch - skip_batches)
        if stop is None:
            self.reporter.epoch_end(state)
        return stop

    def _train_steps(self, steps_left: int, remaining: int) -> int | None:
        """`steps_left` optimizer steps over the epoch's `remaining` batches, saving every --save-every steps;
        returns the stop signal every rank agreed on, if any (it ends the epoch early)."""
        cfg, state = self.cfg, self.state
        batches = TimedBatches(self.data.train_loader, D.get_world_size())
        for step in range(steps_left):
            accumulate = min(cfg.grad_accum, remaining)
            stop = self._train_step(batches, accumulate)
            remaining -= accumulate
            if stop is not None and step < steps_left - 1:
                return stop
            # the last step of this call ends normally (validation, save); the run loop's next check (the
            # flag is still set) then stops without another save
            if (
                cfg.save_every
                and state.global_step % cfg.save_every == 0
                and state.step_in_epoch < self.data.steps_per_epoch
                and not self._at_max_steps()
            ):
                self._save()  # mid-epoch: this epoch's checkpoint, overwritten atomically
        return None

    def _train_step(self, batches: TimedBatches, accumulate: int) -> int | None:
        """One optimizer step over `accumulate` batches, and its report; returns the stop signal every rank
        agreed on before the update, if any."""
        state, agreed = self.state, []
        start, lr = time.perf_counter(), self.opt.lr_now

        def check(loss: torch.Tensor) -> None:  # every rank, before the weights change
            agreed.append(agree(loss, self.device))
            if agreed[-1].non_finite_ranks:
                raise NonFiniteLossError(
                    state.global_step + 1, state.epoch, agreed[-1].non_finite_ranks, self.last_save[0]
                )

        batches.reset()
        settings = StepSettings.of(self.cfg, self.device, accumulate)
        train_step(self.forward, batches, self.opt, settings, no_sync=self.no_sync, before_update=check)
        state.global_step += 1
        state.step_in_epoch += 1
        self.reporter.step(state, agreed[-1].loss, lr, time.perf_counter() - start, batches)
        return agreed[-1].stop

    def _stop_if(self, signum: int | None) -> None:
        """Every rank agreed on a stop signal: save this step (unless saved already) and raise StoppedBySignal."""
        if signum is None:
            return
        state = self.state
        if self.last_save[1] != state.global_step and state.global_step > 0:
            self._save()
        acknowledge_stop()
        self.log.record("stop", step=state.global_step, epoch=state.epoch, reason=signal_name(signum))
        self.log.flush()
        raise StoppedBySignal.at(signum, state, self.data.steps_per_epoch, self.last_save[0])

    def _result(self, stopped_by: str, epoch: int | None = None) -> TrainResult:
        s = self.state
        return TrainResult(
            self.cfg.save_dir,
            s.global_step,
            s.epoch if epoch is None else epoch,
            s.epoch_complete or epoch is not None,
            self.last_save[0],
            s.metrics,
            stopped_by,
        )

    # ---- validation and checkpoints -------------------------------------------------------------------

    def _validate(self) -> dict:
        start = time.perf_counter()
        metrics = evaluate(
            self.model, self.data.val_loader, device=self.device, amp=self.cfg.amp
        )  # bare: no sync
        set_train_mode(self.model, self.cfg.freeze_bn)
        if metrics:
            report_validation(self.log, metrics, self.state, time.perf_counter() - start)
        return metrics

    def _save(self) -> None:
        """Collective: gathers every rank's RNG state, rank 0 writes atomically and prunes."""
        rng = D.all_gather_object(ckpt.capture_rng_state())
        path = ckpt.checkpoint_path(self.cfg.save_dir, self.state.epoch)
        if D.is_main_process():
            ckpt.save_checkpoint(path, ckpt.checkpoint_contents(self.state, self, rng))
            removed = ckpt.prune_checkpoints(self.cfg.save_dir, self.cfg.keep_checkpoints)
            self.log.flush()
            self.log.info(
                f"saved {path}" + (f" (removed {', '.join(p.name for p in removed)})" if removed else "")
            )
        self.last_save = (path, self.state.global_step)
        D.barrier()


__all__ = [
    "train",
    "Trainer",
    "TrainResult",
    "NonFiniteLossError",
    "ResumeError",
    "TrainSetupError",
    "SaveDirInUseError",
    "StoppedBySignal",
]
