"""Many processes, one artifact: the world of a torchrun / srun launch and sharded outputs.

A heavy stage runs unchanged under

    torchrun --nproc_per_node=K -m stages.teacher_features          # one node, K processes
    torchrun --nnodes=N --nproc_per_node=K --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT ...
    srun --ntasks=W python -m stages.teacher_features               # with MASTER_ADDR/PORT set

and started by hand it is simply the world of one process (W = 1), which never touches
torch.distributed. Rank r of W computes a deterministic shard of the scans (`shard`) and
writes its own blocks of the artifact's ragged stores; when every rank has succeeded,
rank 0 checks the blocks, writes the stores' roots and renames the artifact into place
(`ShardedOutput`). The bytes are those of W = 1: the blocks depend on the scans alone.

All ranks must see the same filesystem (the artifact's temporary directory is shared) and
run the same sequence of collectives: each `ShardedOutput` makes three (one on entry, two
on exit, always, also on failure) and `World.sum` one.

Failures. A rank that raises inside a `ShardedOutput` still takes part in its exit
collectives, so every rank learns of it there, rank 0 removes the temporary, and every rank
raises (the failing one its own error, the others a RuntimeError naming it). A rank that
dies outright (killed, out of memory) is noticed by torchrun, which stops the others; under
srun without torchrun the others fail when their next collective reports the lost peer or,
at worst, when the process group's timeout (`launched(timeout_s=...)`) expires. Either way
nothing half-written reaches the artifact's path: at most a `.<name>.tmp-<token>` sibling
stays behind, which is never mistaken for the artifact and can be deleted.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from pipeline.devices import DeviceChoice, resolve_device
from pipeline.store.atomic import AtomicPath, disk_full_error
from pipeline.store.ragged import Chunking, ColumnSpec, RaggedPartWriter, finish_ragged, scans_per_block

log = logging.getLogger(__name__)

T = TypeVar("T")


def shard(items: Sequence[T], block: int, rank: int, size: int) -> list[T]:
    """Rank `rank`'s share of `items` among `size` ranks, in the items' order.

    The items are cut into blocks of `block` consecutive items (the last may be shorter),
    and the blocks are dealt like cards: rank r gets blocks r, r + W, r + 2W, ... Whole
    blocks, because a block of a ragged store is written by one process; consecutive items
    within a block, so each rank reads its inputs in runs; dealt rather than cut into W
    contiguous stretches, because datasets list similar scans together (a city, a night
    drive) and dealing spreads a slow stretch over all ranks. Depends on nothing but its
    arguments: every rank computes every rank's share alike.
    """
    if block < 1 or size < 1 or not 0 <= rank < size:
        raise ValueError(f"bad shard request: block {block}, rank {rank} of {size}")
    num_blocks = -(-len(items) // block)
    return [item for k in range(rank, num_blocks, size) for item in items[k * block:(k + 1) * block]]


@dataclass(frozen=True)
class World:
    """Where this process stands among the processes of one launch.

    rank: 0 .. size - 1 over all nodes; local_rank: index on this node (its GPU); device:
    the device this rank computes on (the LOCAL_RANK'th GPU on CUDA) and where collectives'
    tensors live. The collectives are no-ops for size 1 and need `launched()` otherwise.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.rank < self.size or self.local_rank < 0:
            raise ValueError(f"bad world: rank {self.rank} of {self.size}, local rank {self.local_rank}")

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, shows progress and commits artifacts."""
        return self.rank == 0

    def shard(self, items: Sequence[T], block: int = 1) -> list[T]:
        """This rank's share of `items` (see `shard`)."""
        return shard(items, block, self.rank, self.size)

    def sum(self, values: Sequence[int]) -> list[int]:
        """Element-wise sum over ranks of integer counts (one collective)."""
        if self.size == 1:
            return [int(v) for v in values]
        tensor = torch.tensor([int(v) for v in values], dtype=torch.int64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return [int(v) for v in tensor.tolist()]

    def failed_ranks(self, ok: bool) -> list[int]:
        """Every rank says whether it succeeded; all learn which did not (one collective)."""
        if self.size == 1:
            return [] if ok else [0]
        flags = torch.zeros(self.size, dtype=torch.int64, device=self.device)
        flags[self.rank] = 0 if ok else 1
        dist.all_reduce(flags, op=dist.ReduceOp.SUM)
        return [rank for rank, flag in enumerate(flags.tolist()) if flag]

    def share(self, value: int) -> int:
        """Rank 0's integer, given to every rank (one collective)."""
        if self.size == 1:
            return int(value)
        tensor = torch.tensor([int(value) if self.is_main else 0], dtype=torch.int64, device=self.device)
        dist.broadcast(tensor, src=0)
        return int(tensor.item())


def _int_env(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ValueError(f"environment variable {name}={env[name]!r} is not an integer") from None


def world_from_env(env: Mapping[str, str] | None = None) -> World:
    """Rank, size and local rank as the launcher set them (no device, nothing initialised).

    torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (also when srun starts one torchrun per
    node; they win). srun alone sets SLURM_PROCID, SLURM_LOCALID and, for the tasks of a
    step, SLURM_STEP_NUM_TASKS; SLURM_NTASKS is not used because a batch script (one
    process, not launched by srun) has it too, and it would wait for peers that never come.
    Anything else is one process.
    """
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return World(_int_env(env, "RANK"), _int_env(env, "WORLD_SIZE"),
                     _int_env(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0)
    if "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env:
        return World(_int_env(env, "SLURM_PROCID"), _int_env(env, "SLURM_STEP_NUM_TASKS"),
                     _int_env(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0)
    return World()


@contextmanager
def launched(device: DeviceChoice | str = "auto", *, timeout_s: float = 1800,
             setting: str = "device") -> Iterator[World]:
    """The world of this launch, its process group set up for the block and torn down after.

    W = 1: `World(device=resolve_device(device))`, torch.distributed untouched. W > 1: nccl
    when the device is CUDA (this rank's GPU, LOCAL_RANK, becomes the current device, so
    code that resolves "cuda" lands on it), gloo on CPU; MASTER_ADDR and MASTER_PORT must
    be set (torchrun does; under srun alone, export them). A collective that waits longer
    than `timeout_s` (a peer died) raises instead of hanging. Ranks other than 0 log
    warnings and errors only: one rank speaks for all.
    """
    world = world_from_env()
    resolved = resolve_device(device, setting)
    if world.size == 1:
        yield World(device=resolved)
        return
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise RuntimeError(f"rank {world.rank} of {world.size}: {' and '.join(missing)} not set; "
                           "launch with torchrun, or export them (the address of rank 0's node and "
                           "a free port) before srun")
    if resolved.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"rank {world.rank}: local rank {world.local_rank} but this node has "
                               f"{torch.cuda.device_count()} GPUs; start one process per GPU")
        resolved = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(resolved)
    backend = "nccl" if resolved.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method="env://", rank=world.rank, world_size=world.size,
                            timeout=timedelta(seconds=timeout_s))
    if not world.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    log.info("%d processes (%s), rank 0 on %s", world.size, backend, resolved)
    try:
        yield World(world.rank, world.size, world.local_rank, resolved)
    finally:
        dist.destroy_process_group()


@dataclass(frozen=True)
class _Store:
    path: Path
    columns: Mapping[str, ColumnSpec | tuple]
    attributes: Mapping[str, Any]


class ShardedOutput:
    """An artifact directory of ragged stores over `scan_ids`, written by all ranks together.

    `scan_ids` is this rank's share, the scans it must compute and append, in order; every
    store the artifact holds is opened with `ragged()`. On leaving the block, the ranks
    agree whether all succeeded; if so rank 0 finishes every store and renames the
    directory into place, else it removes it; then every rank returns or raises.

    >>> with launched() as world:                                          # doctest: +SKIP
    ...     with ShardedOutput(out, reader.scan_ids, world) as output, \\
    ...          output.ragged("patches", columns) as patches:
    ...         for scan_id in output.scan_ids:
    ...             patches.append(scan_id, **compute(scan_id))

    With W = 1 this is `atomic_output` plus the plain writer, byte for byte.
    """

    def __init__(self, path: str | Path, scan_ids: Sequence[str], world: World, *,
                 chunking: Chunking = Chunking(), scratch: str | Path | None = None) -> None:
        self.path = Path(path)
        self.scratch = scratch  # where the shared temporary lives (`pipeline.store.atomic`)
        self.world = world
        self.all_scan_ids = tuple(scan_ids)
        self.scans_per_block = scans_per_block(len(self.all_scan_ids))
        self.scan_ids = world.shard(self.all_scan_ids, self.scans_per_block)
        self.chunking = chunking
        self._stores: list[_Store] = []
        self._atomic: AtomicPath | None = None

    def __enter__(self) -> ShardedOutput:
        token = secrets.randbits(62)
        if self.world.is_main:
            AtomicPath(self.path, f"{token:016x}", self.scratch).tmp.mkdir()
        # Shared after the mkdir: the others only write into the directory once it exists.
        token = self.world.share(token)
        self._atomic = AtomicPath(self.path, f"{token:016x}", self.scratch)
        return self

    def ragged(self, name: str | None, columns: Mapping[str, ColumnSpec | tuple], *,
               attributes: Mapping[str, Any] | None = None) -> RaggedPartWriter:
        """A writer of this rank's blocks of the store at `<path>/<name>` (None: `<path>` itself)."""
        if self._atomic is None:
            raise RuntimeError("ragged() outside the ShardedOutput's with block")
        path = self._atomic.tmp if name is None else self._atomic.tmp / name
        self._stores.append(_Store(path, columns, dict(attributes or {})))
        return RaggedPartWriter(path, columns, self.all_scan_ids, self.scans_per_block, self.chunking)

    def _finish(self) -> None:
        for store in self._stores:
            finish_ragged(store.path, store.columns, self.all_scan_ids, self.scans_per_block,
                          store.attributes)
        self._atomic.commit()

    def __exit__(self, exc_type, exc, tb) -> None:
        world, atomic = self.world, self._atomic
        try:
            failed = world.failed_ranks(exc_type is None)
        except BaseException:  # a peer died (connection closed, timeout): clean up, then fail
            if world.is_main:
                atomic.abort()
            raise
        error: BaseException | None = None
        if world.is_main:
            try:
                if failed:
                    atomic.abort()
                else:
                    self._finish()
            except BaseException as problem:  # e.g. a block missing: nothing is committed
                atomic.abort()
                error = problem
        # Everyone waits for rank 0's commit or cleanup, so no rank ends (and gets its
        # siblings stopped by torchrun) while rank 0 is still at it.
        unfinished = world.failed_ranks(error is None)
        if exc_type is not None:  # this rank's own error propagates (a full disk naming the artifact)
            named = disk_full_error(exc, self.path)
            if named is not None:
                raise named from exc
            return
        if error is not None:
            raise disk_full_error(error, self.path) or error
        if failed or unfinished:
            ranks = ", ".join(str(r) for r in failed or unfinished)
            raise RuntimeError(f"rank {ranks} of {world.size} failed writing {self.path}; "
                               "nothing was written there (see that rank's error)")
