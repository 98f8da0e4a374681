"""Distributed data-parallel distillation: W processes train one student as one process would.

Under `torchrun --nproc_per_node W -m stages.distill` each process finds its rank and joins
the process group through `pipeline.distributed.launched` (gloo on CPU, NCCL on CUDA with
the process's LOCAL_RANK GPU), draws its share of every global batch
(`pipeline.training.sampling`) and runs its training steps through `data_parallel`: a
DistributedDataParallel that averages the gradients over the ranks. A single process is the
same code with W = 1: no wrapper.

Two things make the W-process gradient equal to the single-process one, not just close:

* BatchNorm statistics are those of the global batch. WaffleIron's embedding normalises
  with batch statistics in training; per-rank statistics would differ from the single
  process's. `global_batchnorm` swaps every BatchNorm for one that sums its statistics over
  the ranks (torch's SyncBatchNorm on CUDA; `GlobalBatchNorm`, the same maths, on CPU,
  where SyncBatchNorm refuses to run).
* The batch is padded as one. WaffleIron's BatchNorm also sees the padded points of a
  batch (as in the reference), so every rank pads its scans to the longest scan of all
  ranks, as the single process pads the whole batch.

The loss weighting that completes the equality is in `pipeline.training.loop.distill_student`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.distributed import World
from pipeline.students.waffleiron import WaffleIron


def all_reduce_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """Sum a few numbers over the ranks, in float64 (counts and loss sums for the log)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [float(v) for v in values]
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_reduce_max(value: int, device: torch.device) -> int:
    """The largest `value` of all ranks."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


# --------------------------------------------------------------------------- BatchNorm


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) that autograd differentiates: the gradient of a sum over the ranks is
    the sum of the ranks' gradients, so the backward pass all-reduces too."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm (any input rank >= 2) whose training statistics span every rank's batch.

    The mean and the biased variance are sums over all ranks (two all-reduces that autograd
    differentiates through, so each rank's gradient also carries the other ranks' losses
    through the shared statistics), the running statistics get the unbiased global
    variance: exactly what one BatchNorm over the concatenated batch computes. Sums are in
    float64, as the CPU BatchNorm kernel accumulates. In eval mode it is a plain BatchNorm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dimensions, got {input.dim()}")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        x = input.double()
        (count,) = all_reduce_sum([input.numel() // input.shape[1]], input.device)
        mean = _SumOverRanks.apply(x.sum(dims)) / count
        centred = x - mean.view(shape)
        var = _SumOverRanks.apply(centred.square().sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_((var * count / max(count - 1, 1)).to(self.running_var.dtype), factor)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


def _to_global_batchnorm(module: nn.Module) -> nn.Module:
    if not isinstance(module, nn.modules.batchnorm._BatchNorm):
        for name, child in module.named_children():
            setattr(module, name, _to_global_batchnorm(child))
        return module
    converted = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
    if module.affine:  # the same Parameter objects: an optimiser built before still holds them
        converted.weight, converted.bias = module.weight, module.bias
    if module.track_running_stats:
        converted.running_mean, converted.running_var = module.running_mean, module.running_var
        converted.num_batches_tracked = module.num_batches_tracked
    converted.train(module.training)
    return converted


def global_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Make every BatchNorm of `model` (in place, same state-dict keys) normalise over all ranks."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _to_global_batchnorm(model)


# --------------------------------------------------------------------------- the wrapper


def _pad_to_global_length(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook of a WaffleIron: pad the batch to the longest scan of all ranks.

    `waffleiron.inputs.collate` pads each rank's scans to that rank's longest; the extra points
    follow its convention (zero features, cell 0, occupancy 0, the last point as every
    neighbour), so BatchNorm counts the padding of the single process's batch. The extra
    output columns are dropped by `PointBatch.unpad`, which keeps each scan's own points.
    """
    features, neighbors, cell_indices, occupancy = args
    length = features.shape[2]
    extra = all_reduce_max(length, features.device) - length
    if not extra:
        return args
    batch, _, k = neighbors.shape
    return (F.pad(features, (0, extra)),
            torch.cat([neighbors, neighbors.new_full((batch, extra, k), length + extra - 1)], dim=1),
            F.pad(cell_indices, (0, extra)),
            F.pad(occupancy, (0, extra)))


class _Step(nn.Module):
    """A whole training step as a module, so DistributedDataParallel can wrap code that calls
    the student directly (`training_batch`): DDP needs its own forward around the student's."""

    def __init__(self, model: nn.Module, step: Callable) -> None:
        super().__init__()
        self.model = model  # registered, so DDP syncs and reduces its parameters
        self.step = step

    def forward(self, *args):
        return self.step(*args)


@contextmanager
def data_parallel(model: nn.Module, step: Callable, world: World) -> Iterator[Callable]:
    """Yield the callable that runs a training step: `step` itself for W = 1, else a
    DistributedDataParallel around it (`step` must run `model`, and only it).

    For W > 1, `model`'s BatchNorms become global in place (`global_batchnorm`, same
    Parameters and state-dict keys: build the optimiser and save from `model` itself) and a
    WaffleIron pads each batch to the global longest scan while the block runs.
    """
    if world.size == 1:
        yield step
        return
    global_batchnorm(model, world.device)
    hooks = [model.register_forward_pre_hook(_pad_to_global_length)] if isinstance(model, WaffleIron) else []
    try:
        yield DistributedDataParallel(_Step(model, step),
                                      device_ids=[world.device.index] if world.device.type == "cuda" else None)
    finally:
        for hook in hooks:
            hook.remove()
