r"""torch.distributed plumbing of ``JKOTrainer``: the process group, data shards, reductions, DDP.

Launch: ``torchrun --standalone --nproc_per_node=N script.py`` where the script calls
``JKOTrainer.fit`` with the same data on every rank; ``fit`` joins (or creates, from torchrun's
``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``) the process group.

What a run with ``W`` ranks shares with the single-process run of the same seed and global
``batch_size``: the initial weights (rank 0's, broadcast), the validation subset, the step
sizes, the stopping and growth decisions' rule, and rank 0's batch order and probe seed. What
differs: rank ``r`` trains on rows ``r, r + W, ...`` and draws its ``batch_size / W`` points per
step with its own generator, so the mini-batches differ and the models agree with the
single-process one only within the statistical noise of training (not bit for bit). With
``W = 1`` (plain ``python`` or ``torchrun --nproc_per_node=1``) training is bit-identical to the
single-process trainer. Within one run all ranks hold bit-identical weights (DDP applies the same
averaged gradients) and report bit-identical figures (sums all-reduced, then rank 0's broadcast),
and two runs with the same ``W``, seed and hardware are identical.
"""

from __future__ import annotations

import datetime
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "BACKENDS",
    "DistributedContext",
    "DistributedError",
    "setup",
    "shard",
    "LossTerms",
    "wrap_ddp",
    "is_main_process",
    "resolve_device",
]

BACKENDS = ("gloo", "nccl")
#: Environment variables set by ``torchrun`` (and needed by the ``env://`` rendezvous).
_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(RuntimeError):
    """A collective operation failed or timed out: another rank most likely died (see its error)."""


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the run.

    Attributes:
        rank: This process's rank, ``0 .. world_size - 1``.
        world_size: Number of processes; 1 means plain single-process training (no collectives).
        backend: ``"gloo"``/``"nccl"``, or ``None`` when ``world_size == 1``.
        local_rank: Rank on this machine (``LOCAL_RANK`` from torchrun), used to pick a GPU.
        owns_group: Whether ``setup`` created the process group (then ``close`` destroys it).
    """

    rank: int = 0
    world_size: int = 1
    backend: str | None = None
    local_rank: int = 0
    owns_group: bool = False

    @property
    def active(self) -> bool:
        """Whether collectives are used (more than one process)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints and logs and shows progress."""
        return self.rank == 0

    # -- collectives (no-ops with one process) -------------------------------------------------
    def guard(self, what: str, fn: Callable[[], object]) -> object:
        """Run ``fn``, a collective, turning a backend failure into ``DistributedError``."""
        try:
            return fn()
        except RuntimeError as err:  # dist.DistError is a RuntimeError too
            if isinstance(err, DistributedError) or not _is_backend_failure(err):
                raise
            raise DistributedError(
                f"rank {self.rank}/{self.world_size}: {what} failed ({type(err).__name__}: {err}); "
                "another rank has probably stopped with an error, see its output"
            ) from err

    def all_sum(self, values: Tensor) -> Tensor:
        """Sum a float64 CPU tensor over ranks; every rank gets rank 0's bits of the result."""
        if not self.active:
            return values
        buf = values.detach().to(torch.float64).to(self.comm_device).clone()
        self.guard("all_reduce", lambda: dist.all_reduce(buf))
        # One extra tiny broadcast makes the figures bit-identical on every rank whatever the
        # backend's reduction order, so decisions taken from them agree.
        self.guard("broadcast", lambda: dist.broadcast(buf, 0))
        return buf.cpu()

    def all_true(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank."""
        if not self.active:
            return flag
        buf = torch.tensor([0.0 if flag else 1.0], dtype=torch.float64, device=self.comm_device)
        self.guard("all_reduce", lambda: dist.all_reduce(buf))
        return bool(buf.item() == 0)

    def broadcast_object(self, obj: object) -> object:
        """Rank 0's ``obj`` on every rank (pickled; for small things such as checkpoint metadata)."""
        if not self.active:
            return obj
        box = [obj if self.is_main else None]
        self.guard(
            "broadcast_object_list", lambda: dist.broadcast_object_list(box, src=0, device=self.comm_device)
        )
        return box[0]

    def broadcast_module(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers into ``module`` on every rank, in place."""
        if not self.active:
            return
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                buf = t.detach().to(self.comm_device).clone()
                self.guard("broadcast", lambda b=buf: dist.broadcast(b, 0))
                t.copy_(buf.to(t.device))

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.active:
            self.guard("barrier", lambda: dist.barrier())

    @property
    def comm_device(self) -> torch.device:
        """Where tensors must be for the backend (NCCL: this rank's GPU)."""
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def close(self) -> None:
        """Destroy the process group if ``setup`` created it."""
        if self.owns_group and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


# Gloo reports a dead or silent peer as a plain RuntimeError naming gloo, a closed connection or a timeout.
_BACKEND_FAILURE_WORDS = ("gloo", "nccl", "timed out", "connection", "peer")


def _is_backend_failure(err: RuntimeError) -> bool:
    return isinstance(err, dist.DistError) or any(w in str(err).lower() for w in _BACKEND_FAILURE_WORDS)


def _env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as err:
        raise DistributedError(f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}") from err


def setup(
    *, backend: str | None = None, device: torch.device | None = None, timeout: float = 600.0
) -> DistributedContext:
    """Join the process group of this run, creating it from torchrun's variables if needed.

    An initialised group (made by the caller) is used as it is. Otherwise, when ``WORLD_SIZE``
    (set by ``torchrun``) is above 1, the group is created with the ``env://`` rendezvous:
    ``backend`` or, by default, ``"nccl"`` when training on CUDA and ``"gloo"`` on CPU, with
    ``timeout`` seconds on every collective so that a rank that dies stops the others with a
    ``DistributedError`` instead of a hang. Without either, the run is single-process.

    Args:
        backend: ``"gloo"``, ``"nccl"`` or ``None`` (automatic).
        device: The training device (chooses the automatic backend).
        timeout: Seconds a collective may wait for the other ranks.

    Returns:
        The ``DistributedContext`` of this process.

    Raises:
        ValueError: Unknown ``backend`` or a non-positive ``timeout``.
        DistributedError: ``WORLD_SIZE > 1`` but torchrun's other variables are missing, or the
            rendezvous failed.
    """
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)} or None, got {backend!r}")
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
        return DistributedContext(
            rank=dist.get_rank(),
            world_size=world,
            backend=dist.get_backend() if world > 1 else None,
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )
    world = _env_world_size()
    if world <= 1:
        return DistributedContext()
    missing = [v for v in _TORCHRUN_VARS if v not in os.environ]
    if missing:
        raise DistributedError(f"WORLD_SIZE={world} but {missing} are not set; launch with torchrun")
    if not dist.is_available():
        raise DistributedError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend is None:
        backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ValueError("backend='nccl' needs CUDA; use backend='gloo' on CPU")
        torch.cuda.set_device(device if device is not None and device.index is not None else local_rank)
    try:
        dist.init_process_group(backend, init_method="env://", timeout=datetime.timedelta(seconds=timeout))
    except (RuntimeError, ValueError, dist.DistError) as err:
        raise DistributedError(
            f"could not join the process group ({backend}, WORLD_SIZE={world}): {err}"
        ) from err
    return DistributedContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        backend=backend,
        local_rank=local_rank,
        owns_group=True,
    )


def shard(x: Tensor, ctx: DistributedContext) -> Tensor:
    """Rows ``rank, rank + W, rank + 2W, ...`` of ``x`` (the whole of ``x`` with one process)."""
    return x[ctx.rank :: ctx.world_size] if ctx.active else x


class LossTerms(nn.Module):
    """``forward(batch, context=None)``: the three JKO loss terms of ``step``, a tensor of shape ``(3,)``.

    ``JKOBlock.transport`` returns a ``Transport``, not a module output DDP can track; this small
    module computes the loss terms inside ``forward`` so that ``DistributedDataParallel`` can wrap it.
    """

    def __init__(
        self, step: nn.Module, terms: Callable[[nn.Module, object], tuple[Tensor, Tensor, Tensor]]
    ) -> None:
        super().__init__()
        self.step = step
        self._terms = terms

    def forward(self, batch: Tensor, context: Tensor | None = None) -> Tensor:
        return torch.stack(self._terms(self.step, self.step.transport(batch, context=context)))


def wrap_ddp(module: nn.Module, ctx: DistributedContext, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(module)`` (its construction broadcasts rank 0's weights), or
    ``module`` itself with one process."""
    if not ctx.active:
        return module
    ids = [device] if device.type == "cuda" else None
    # Buffers (a block's time interval) are equal on all ranks: no re-broadcast at every forward.
    params = inspect.signature(DistributedDataParallel).parameters
    sync = (
        {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    )
    return ctx.guard(
        "DistributedDataParallel setup", lambda: DistributedDataParallel(module, device_ids=ids, **sync)
    )


def is_main_process() -> bool:
    """False only in a process group's ranks other than 0 (for code that writes outputs); before
    the group exists, torchrun's ``RANK`` tells."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device of this process: ``device``, or by default CUDA when available, else the CPU.

    Under ``torchrun`` a bare ``"cuda"`` (or the default) means this process's GPU,
    ``cuda:LOCAL_RANK``: one GPU per local rank, and NCCL as the trainer's automatic backend.

    Raises:
        ValueError: An unknown device string, or CUDA asked for where it is not available.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda', got {device!r}") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} asked for, but CUDA is not available here; use 'cpu'")
        if device.index is None and _env_world_size() > 1:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device
