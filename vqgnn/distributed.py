"""Data-parallel training on PyTorch's own engine (``torch.distributed``, under ``torchrun``).

The trainer talks to one of two strategies behind the same small protocol, chosen once:

* :class:`SingleProcess`: no process group; every operation is the identity (no extra cost);
* :class:`DataParallel`: ``P`` processes (ranks) train one model. The model is wrapped in
  :class:`~torch.nn.parallel.DistributedDataParallel`; each rank takes a disjoint share of
  every epoch's batches (rank ``r`` takes batches ``r, r + P, ...`` of the same global
  sequence, the incomplete last round dropped); the codebooks' batch statistics are summed
  across ranks through their all-reduce injection point
  (:meth:`~vqgnn.nn.QuantizedLayer.set_all_reduce`); after every step the ranks exchange
  their batch nodes' new codeword assignments (:meth:`DataParallel.exchange_assignments`);
  evaluation, logs, records and checkpoints come from rank 0.

Gradients are summed across ranks and each rank's loss is divided by ``P``: a step of ``P``
ranks with batch ``b`` each is then the step of one process with the union batch ``P b``,
including the representation gradients that the gradient codebooks average (a mean over
ranks would scale them by ``P``).

Example (every rank runs the same command)::

    torchrun --nproc_per_node 2 -m vqgnn train --dataset synthetic --method vq --epochs 5
"""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, Iterable, Iterator, Optional, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from vqgnn.errors import ConfigError

T = TypeVar("T")

#: Seconds a collective may wait for the other ranks before the run fails.
DEFAULT_TIMEOUT = 300.0


#: Words of the backends' errors when a peer is gone or late (gloo's are RuntimeErrors).
COLLECTIVE_ERRORS = ("gloo", "Gloo", "NCCL", "nccl", "Connection", "connection", "Timed out",
                     "timed out", "timeout", "ProcessGroup", "peer")


class DistributedError(RuntimeError):
    """A collective failed or timed out: another rank died, hangs, or is too slow."""


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher setting
    ``WORLD_SIZE``) as one of several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


class SingleProcess:
    """One process: the identity for every data-parallel operation."""

    rank = 0
    world_size = 1
    is_main = True

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module that runs training forwards (the model itself)."""
        return model

    def attach(self, model: torch.nn.Module) -> None:
        """Connect the model's codebooks to the other ranks (nothing to do)."""

    def share(self, batches: Iterable[T]) -> Iterator[T]:
        """This rank's share of an epoch's batches (all of them)."""
        return iter(batches)

    def num_shared(self, num_batches: int) -> int:
        """Steps per epoch of this rank for ``num_batches`` batches of the epoch."""
        return num_batches

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks."""
        return value

    def decide(self, flag: bool) -> bool:
        """Rank 0's ``flag``, on every rank."""
        return flag

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj``, on every rank."""
        return obj

    def exchange_assignments(self, layers: Sequence[Any], batch: Tensor, width: int) -> None:
        """Share the batch nodes' new codeword assignments with the other ranks (none)."""

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """Give every rank rank 0's buffers (after rank 0's evaluation; nothing here)."""

    def failure(self, err: BaseException, where: str) -> Optional[DistributedError]:
        """``err`` as a :class:`DistributedError` if it came from a collective (never here)."""
        return None

    def close(self) -> None:
        """Leave the process group (none)."""

    def __repr__(self) -> str:
        return "SingleProcess()"


def _sum_gradients(state: Any, bucket: dist.GradBucket) -> torch.futures.Future[Tensor]:
    """DDP communication hook: all-reduce a gradient bucket as a sum (no division by P)."""
    fut = dist.all_reduce(bucket.buffer(), async_op=True).get_future()  # type: ignore[union-attr]
    return fut.then(lambda f: f.value()[0])


# DDP checks the hook's annotations as objects (this module's are strings).
_sum_gradients.__annotations__ = {"state": Any, "bucket": dist.GradBucket,
                                  "return": torch.futures.Future[Tensor]}


class DataParallel(SingleProcess):
    """``P`` ranks of an initialised default process group training one model.

    Args:
        timeout: seconds a collective waits for the other ranks (the group's timeout;
            documentation only when the group was initialised elsewhere).

    Use :meth:`from_env` under ``torchrun``.
    """

    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise ConfigError("'DataParallel': no process group is initialised (start the run "
                              "with torchrun, or call DataParallel.from_env())")
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.is_main = self.rank == 0
        self.timeout = timeout
        self.backend = str(dist.get_backend())
        #: Bytes this rank sent in assignment exchanges (``benchmarks/data_parallel.py``
        #: counts every collective's bytes, by kind).
        self.exchanged_bytes = 0

    @classmethod
    def from_env(cls, device: str = "cpu",
                 timeout: float = DEFAULT_TIMEOUT) -> SingleProcess:
        """The strategy of this process: :class:`DataParallel` when ``torchrun`` started it
        as one of several ranks (the default group is initialised here: NCCL for CUDA,
        gloo for the CPU), else :class:`SingleProcess`.

        Args:
            device: the training device's type (``'cpu'`` or ``'cuda'``).
            timeout: seconds a collective may wait for the other ranks before failing.
        """
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not (
                0 < timeout < float("inf")):
            raise ConfigError(f"'DataParallel': 'timeout' must be a number of seconds > 0, "
                              f"received {timeout!r}")
        if not launched():
            return SingleProcess()
        if not dist.is_initialized():
            cuda = torch.device(device).type == "cuda"
            if cuda:
                torch.cuda.set_device(local_rank())
            dist.init_process_group("nccl" if cuda else "gloo", store=_attempt_store(timeout),
                                    rank=int(os.environ["RANK"]),
                                    world_size=int(os.environ["WORLD_SIZE"]),
                                    timeout=timedelta(seconds=timeout))
        return cls(timeout)

    # ------------------------------------------------------------------ model
    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` in DistributedDataParallel: rank 0's parameters and buffers (codebooks,
        assignments) are broadcast to every rank here; gradients are summed."""
        from torch.nn.parallel import DistributedDataParallel

        device = next(model.parameters()).device
        ids = [device.index] if device.type == "cuda" else None
        # Buffers (codewords, EMA statistics, assignments) are broadcast once, here; then
        # the codebooks' all-reduce and the assignment exchange keep them equal.
        ddp = DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)
        ddp.register_comm_hook(None, _sum_gradients)
        return ddp

    def attach(self, model: torch.nn.Module) -> None:
        """Sum every codebook's batch statistics across the ranks (in place)."""
        set_all_reduce = getattr(model, "set_all_reduce", None)
        if set_all_reduce is not None:
            set_all_reduce(self._all_reduce)

    @staticmethod
    def _all_reduce(tensor: Tensor) -> None:
        dist.all_reduce(tensor)

    # ---------------------------------------------------------------- batches
    def share(self, batches: Iterable[T]) -> Iterator[T]:
        """Batches ``rank, rank + P, ...`` of the global sequence; a last round of fewer
        than ``P`` batches is dropped, so that every rank takes as many steps."""
        round_: list[T] = []
        for batch in batches:
            round_.append(batch)
            if len(round_) == self.world_size:
                yield round_[self.rank]
                round_ = []

    def num_shared(self, num_batches: int) -> int:
        return num_batches // self.world_size

    # ------------------------------------------------------------ collectives
    def mean(self, value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=self._device())
        dist.all_reduce(t)
        return t.item() / self.world_size

    def decide(self, flag: bool) -> bool:
        t = torch.tensor([int(flag)], device=self._device())
        dist.broadcast(t, 0)
        return bool(t.item())

    def broadcast_object(self, obj: Any) -> Any:
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, 0, device=self._device())
        return box[0]

    def _device(self) -> torch.device:
        return (torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl"
                else torch.device("cpu"))

    @torch.no_grad()
    def exchange_assignments(self, layers: Sequence[Any], batch: Tensor, width: int) -> None:
        """Every rank's batch nodes and their new codewords (one layer each row), gathered
        once per step and written on every rank, so that the assignment tables stay equal.

        Each rank sends ``(L + 1) * (width + 1)`` ids: its batch (padded to ``width`` by
        repeating its last node, with its own codeword, so duplicates write equal values)
        and a header holding its size. No host synchronisation.

        Args:
            layers: the model's quantized layers (those without a codebook are skipped).
            batch: (b,) this rank's batch node ids, ``b <= width``.
            width: an upper bound on every rank's batch size.
        """
        layers = [layer for layer in layers if layer.has_codebook]
        if not layers:
            return
        b = batch.numel()
        if b > width:
            raise ConfigError(f"'DataParallel.exchange_assignments': the batch holds {b} nodes, "
                              f"more than 'width' ({width})")
        dtype = torch.int32 if layers[0].num_nodes < 2**31 else torch.int64
        rows = [batch, *(layer.quantizer.assignment[batch] for layer in layers)]
        packed = batch.new_empty(len(rows), width + 1, dtype=dtype)
        packed[:, 0] = b
        for i, row in enumerate(rows):
            packed[i, 1:b + 1] = row.to(dtype)
            packed[i, b + 1:] = row[-1:].to(dtype)
        gathered = [torch.empty_like(packed) for _ in range(self.world_size)]
        dist.all_gather(gathered, packed)
        self.exchanged_bytes += packed.numel() * packed.element_size()
        every = torch.stack(gathered)  # (P, L + 1, width + 1)
        valid = (torch.arange(width, device=batch.device).unsqueeze(0)
                 < every[:, 0, :1].long()).reshape(-1)  # (P * width,)
        nodes = every[:, 0, 1:].reshape(-1).long()
        for i, layer in enumerate(layers, start=1):
            layer.write_assignments(nodes, every[:, i, 1:].reshape(-1), valid)

    @torch.no_grad()
    def sync_buffers(self, model: torch.nn.Module) -> None:
        """Broadcast rank 0's buffers (codewords, statistics, assignments) to every rank:
        its evaluation may have changed them (VQ inference refreshes the assignments)."""
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)
        for module in model.modules():  # caches derived from the buffers (attention counts)
            invalidate = getattr(module, "invalidate_caches", None)
            if callable(invalidate):
                invalidate()

    # ----------------------------------------------------------------- faults
    def failure(self, err: BaseException, where: str) -> Optional[DistributedError]:
        """``err`` as a :class:`DistributedError` naming this rank, if a collective raised
        it (a peer rank died, hangs, or missed the timeout)."""
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        collective = isinstance(err, dist.DistError) or (
            isinstance(err, RuntimeError) and any(
                word in text for word in COLLECTIVE_ERRORS))
        if not collective or isinstance(err, DistributedError):
            return None  # a bug or a divergence, not a peer: shown as it is
        return DistributedError(
            f"rank {self.rank} of {self.world_size} ({self.backend}): {where} failed: {text}. "
            f"Another rank died, hangs, or exceeded the {self.timeout:g} s timeout "
            f"(torchrun's summary names the rank that exited first)")

    def close(self) -> None:
        """Leave the process group once every rank is done (a barrier first: destroying
        the group while a peer still communicates can hang with gloo)."""
        if dist.is_initialized():
            try:
                dist.barrier()
            finally:
                dist.destroy_process_group()

    def __repr__(self) -> str:
        return (f"DataParallel(rank={self.rank}, world_size={self.world_size}, "
                f"backend={self.backend!r}, timeout={self.timeout:g})")


def _attempt_store(timeout: float) -> dist.Store:
    """The rendezvous store of this attempt (``MASTER_ADDR:MASTER_PORT``), its keys under
    the restart count: after ``torchrun --max-restarts`` the ranks must not read the
    addresses that the previous attempt's ranks published there (a restarted rank then
    connects to a dead peer)."""
    rank = int(os.environ["RANK"])
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "False") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          int(os.environ["WORLD_SIZE"]), is_master=not agent and rank == 0,
                          timeout=timedelta(seconds=timeout))
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"/vqgnn/attempt_{restart}", store)


def local_rank() -> int:
    """This process's rank on its machine (``LOCAL_RANK``, set by torchrun; 0 without)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def current() -> SingleProcess:
    """:class:`DataParallel` over the initialised default process group if it has several
    ranks, else :class:`SingleProcess`."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return DataParallel()
    return SingleProcess()


__all__ = ["SingleProcess", "DataParallel", "DistributedError", "DEFAULT_TIMEOUT", "launched",
           "local_rank", "current"]
