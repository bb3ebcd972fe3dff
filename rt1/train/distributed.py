"""Everything about processes and devices for training, in one module.

One code path for the three ways to start `train_ddp.py`:

    python train_ddp.py ...                                           one process, no process group
    torchrun --nproc_per_node=N [--nnodes=M ...] train_ddp.py ...     N processes per node
    python -m torch.distributed.launch --nproc_per_node=N --use_env train_ddp.py ...   (the original's command)

The launchers set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `init_distributed`
reads them (env:// rendezvous). Without WORLD_SIZE (or with WORLD_SIZE=1 and no launcher) no process
group is created and every helper here degrades to the single-process answer, so the trainer never
branches on "am I distributed".

Backend: NCCL when the process uses a CUDA device, gloo otherwise (CPU). Each process uses
cuda:LOCAL_RANK. The process group has a timeout (`timeout_s`): a rank that waits longer than that
in a collective (because another rank died without its launcher noticing, e.g. on another node)
fails instead of hanging forever. torchrun additionally stops every worker as soon as one exits
non-zero.

Nothing here runs at import; `is_main_process()` is THE check for rank-0-only work (logging,
TensorBoard, checkpoint writes).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from rt1.errors import RT1Error


class DistributedSetupError(RT1Error, RuntimeError):
    """The launcher's environment is inconsistent or the process group cannot be created."""


class PeerLostError(RT1Error, RuntimeError):
    """A collective failed because another process of the job died or became unreachable (or timed out)."""


@dataclass(frozen=True)
class DistInfo:
    """What this process is: its rank, the world, its device and the collective backend."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # "nccl" / "gloo", None without a process group
    peers: tuple[tuple[str, int], ...] = ()  # (host, PID) of every rank, gathered when the group is created

    @property
    def distributed(self) -> bool:
        """True when there is more than one process (DDP wrap, distributed samplers)."""
        return self.world_size > 1


def _env_int(name: str, default: int | None) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise DistributedSetupError(f"environment variable {name}={value!r} is not an integer") from None


def select_device(requested: str, local_rank: int) -> torch.device:
    """'auto' -> cuda:LOCAL_RANK when CUDA is available, else cpu; 'cpu'; 'cuda' -> cuda:LOCAL_RANK."""
    if requested not in ("auto", "cpu", "cuda"):
        raise DistributedSetupError(f"device must be auto, cpu or cuda, got {requested!r}")
    use_cuda = requested == "cuda" or (requested == "auto" and torch.cuda.is_available())
    if not use_cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DistributedSetupError("--device cuda was asked for but CUDA is not available")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise DistributedSetupError(
            f"LOCAL_RANK={local_rank} but this node has only {count} CUDA device(s): "
            f"start at most {count} processes per node"
        )
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    return device


def init_distributed(
    device: str = "auto", timeout_s: float = 900.0, local_rank_arg: int | None = None
) -> DistInfo:
    """Read the launcher's environment, pick the device, and create the process group if needed.

    `local_rank_arg` is the `--local-rank` argument that `torch.distributed.launch` passes when it is
    run without --use_env; the LOCAL_RANK environment variable wins when both are present.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", local_rank_arg if local_rank_arg is not None else 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise DistributedSetupError(f"RANK={rank} and WORLD_SIZE={world_size} are inconsistent")
    if local_rank < 0:
        raise DistributedSetupError(f"LOCAL_RANK={local_rank} is negative")
    dev = select_device(device, local_rank)
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, dist.get_backend())
    launched = "MASTER_ADDR" in os.environ and "RANK" in os.environ
    if world_size == 1 and not launched:
        return DistInfo(0, 1, local_rank, dev, None)
    if not dist.is_available():
        raise DistributedSetupError("this PyTorch build has no torch.distributed support")
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise DistributedSetupError(
            f"WORLD_SIZE={world_size} but {', '.join(missing)} not set: start with torchrun "
            "or python -m torch.distributed.launch --use_env"
        )
    backend = "nccl" if dev.type == "cuda" else "gloo"
    kwargs = {"device_id": dev} if dev.type == "cuda" else {}
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        world_size=world_size,
        rank=rank,
        timeout=datetime.timedelta(seconds=timeout_s),
        **kwargs,
    )
    peers = [None] * world_size  # who is who, so that a lost peer can be named later
    dist.all_gather_object(peers, (socket.gethostname(), os.getpid()))
    return DistInfo(rank, world_size, local_rank, dev, backend, tuple(tuple(p) for p in peers))


# What gloo, NCCL and the c10d store say when a peer process is gone, unreachable or too slow.
_PEER_FAILURE = (
    "gloo",
    "nccl",
    "processgroup",
    "connection closed by peer",
    "connection reset",
    "broken pipe",
    "failed to recv",
    "communicator was aborted",
)


def _process_gone(pid: int) -> bool:
    """True when no process `pid` runs on this host (a zombie, killed and not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return False


def _lost_peer_message(error: BaseException, info: DistInfo) -> str:
    me, host = info.rank, socket.gethostname()
    described = []
    for rank, (peer_host, pid) in enumerate(info.peers):
        if rank == me:
            continue
        state = (
            ("gone" if _process_gone(pid) else "still running") if peer_host == host else "on another host"
        )
        described.append((state, f"rank {rank} (host {peer_host}, PID {pid}, {state})"))
    gone = [text for state, text in described if state == "gone"]
    others = (
        gone or [text for state, text in described if state != "still running"] or [t for _, t in described]
    )
    cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    cause = re.sub(r"^\[[^\]]*\]\s*", "", cause).split(". ")[0]  # gloo: "[file:line] What happened. Advice."
    return (
        f"lost contact with {'the peer' if len(others) == 1 else 'peers'} {', '.join(others)} in a "
        f"{info.backend} collective (its node or process died, or it did not answer within --dist-timeout): "
        f"{cause[:300]}; rerun every node's command to resume from the last checkpoint"
    )


@contextlib.contextmanager
def lost_peers_reported(info: DistInfo):
    """Turn a collective's failure caused by a dead or silent peer into one PeerLostError naming the peer."""
    try:
        yield
    except RuntimeError as e:
        if isinstance(e, RT1Error) or not info.distributed:
            raise
        text = str(e).lower()
        if isinstance(e, getattr(dist, "DistError", ())) or any(k in text for k in _PEER_FAILURE):
            raise PeerLostError(_lost_peer_message(e, info)) from None
        raise


def cleanup() -> None:
    """Destroy the process group if there is one (safe to call twice, or without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---- queries --------------------------------------------------------------------------------------


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    """The one check for rank-0-only work: logging, TensorBoard, checkpoint and metric files."""
    return get_rank() == 0


def supports_sync_batchnorm(info: DistInfo) -> bool:
    """SyncBatchNorm needs an accelerator tensor (PyTorch implements it for CUDA, not CPU/gloo)."""
    return info.distributed and info.device.type == "cuda"


# ---- collectives ----------------------------------------------------------------------------------


def barrier() -> None:
    if is_initialized() and get_world_size() > 1:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all ranks in place (no-op in one process); returns it."""
    if is_initialized() and get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_object(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank ([obj] in one process)."""
    if not (is_initialized() and get_world_size() > 1):
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """`obj` of rank `src`, on every rank."""
    if not (is_initialized() and get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def wrap_model(
    model: torch.nn.Module, info: DistInfo, *, sync_bn: bool, find_unused_parameters: bool, compile: bool, log
) -> tuple[torch.nn.Module, torch.nn.Module, object]:
    """The bare model -> (the bare model on the device, the module to call for training, DDP's no_sync or None).

    SyncBatchNorm (sync_bn, NCCL only) -> channels_last on the device -> DDP (world > 1) -> torch.compile.
    """
    if sync_bn and info.distributed:
        if supports_sync_batchnorm(info):
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            log.warning(
                f"--syncBN: SyncBatchNorm needs CUDA (NCCL); with the {info.backend} backend on "
                f"{info.device.type} each process normalises with its own batch statistics"
            )
    # The model runs its convolutions channels_last; matching the weights avoids a copy of every conv
    # gradient into the DDP buckets (and DDP's "grad strides do not match bucket view strides" warning).
    model = model.to(info.device, memory_format=torch.channels_last)
    forward, no_sync = model, None
    if info.distributed:
        forward = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[info.device.index] if info.device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters,
            gradient_as_bucket_view=True,
        )
        no_sync = forward.no_sync
    return model, torch.compile(forward) if compile else forward, no_sync


__all__ = [
    "wrap_model",
    "DistInfo",
    "DistributedSetupError",
    "PeerLostError",
    "lost_peers_reported",
    "init_distributed",
    "cleanup",
    "select_device",
    "is_initialized",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "supports_sync_batchnorm",
    "barrier",
    "all_reduce_sum",
    "all_gather_object",
    "broadcast_object",
]
