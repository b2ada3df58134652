"""How a training step runs in this process, alone or as one of several under torchrun.

`torchrun --nproc-per-node N -m crosssite train ...` starts N copies of the same command (one per
GPU, or N CPU processes). Every rank reads the same data, makes the same split, starts from the same
weights and draws the same batches and augmentations (all follow from the seed); each then trains on
its 1/N share of every site's batch, so the global batch stays `batch_per_site` images per site:

- gradients are averaged across ranks by DistributedDataParallel (gloo on CPU, nccl on GPU);
- batch norm: in training mode every batch norm normalises with the mean and variance of its site's
  whole global batch, summed across ranks (`SyncedBatchNorm`). torch's SyncBatchNorm runs only on
  accelerators, and it could not tell sites apart anyway; here each site's copy inside a
  SiteBatchNorm is synced on its own (every rank runs the sites in the same order). The running
  statistics are then the same on every rank without further communication. All-reducing only the
  running buffers after each step would be cheaper, but the forward pass would then normalise with
  1/N of the site's batch and train a different model than one process does;
- the contrastive loss compares the whole global batch (`gather`), as in one process;
- validation and testing are shared out (`spread`): each rank predicts 1/N of the images and all
  ranks get every prediction;
- only rank 0 writes files (`crosssite.io` skips writes elsewhere; all ranks compute the same results).

So N processes train what one process trains with the same global batch, up to float rounding
(tests/test_distributed.py). Outside torchrun `make_update` only sets the layers and memory layout, and on
a CUDA GPU replays the step as a CUDA graph (crosssite.capture).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from .capture import CapturedUpdate
from .data.transforms import normalize
from .errors import CrossSiteError
from .ranks import active, barrier, is_main, rank, world_size  # noqa: F401  (this module's names too)
from .runtime import prepare_input, prepare_model


def device(requested: str = "auto") -> torch.device:
    """Where this process trains: its rank's GPU under torchrun with nccl; else `requested`
    ("auto": the current CUDA GPU when there is one, otherwise the CPU)."""
    if active():
        return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    if requested == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        where = torch.device(requested)
    except RuntimeError:
        raise CrossSiteError(f"unknown device {requested!r}; use auto, cpu, cuda or cuda:N") from None
    if where.type == "cuda" and not torch.cuda.is_available():
        raise CrossSiteError(f"device {requested!r} asked for, but this PyTorch sees no CUDA GPU")
    return where


def check_precision(precision: str, where: torch.device) -> None:
    if precision == "bf16" and where.type != "cuda":
        raise CrossSiteError(f"--precision bf16 needs a CUDA GPU; this run trains on {where}")


@contextlib.contextmanager
def launched() -> Iterator[None]:
    """Join the process group when torchrun started this process (it sets WORLD_SIZE); leave it after."""
    if "WORLD_SIZE" not in os.environ or active():
        yield
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of every rank's input is the sum of all ranks' output gradients."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class _AllGather(torch.autograd.Function):
    """Rows of every rank, concatenated in rank order (every rank holds the same number)."""

    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


def gather(x: torch.Tensor) -> torch.Tensor:
    """The global batch of a per-rank tensor (gradients flow back to each rank's rows); `x` itself outside torchrun."""
    return _AllGather.apply(x) if active() else x


def spread(items: np.ndarray, compute: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """`compute(items)`, shared out under torchrun: each rank computes every size-th item from its rank
    on, and every rank gets all results in order (validation and testing: no rank repeats another)."""
    if not active():
        return compute(items)
    size, rank_ = world_size(), rank()
    parts: list = [None] * size
    dist.all_gather_object(parts, compute(items[rank_::size]))
    result = np.empty(len(items), dtype=np.result_type(*parts))
    for r, part in enumerate(parts):
        result[r::size] = part
    return result


class SyncedBatchNorm(_BatchNorm):
    """Batch norm whose training-mode statistics are those of the global batch across ranks.

    Same parameters and buffers (and state-dict keys) as the batch norm it replaces; eval mode
    uses the running statistics, exactly as nn.BatchNorm does.
    """

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    @classmethod
    def replacing(cls, bn: _BatchNorm) -> SyncedBatchNorm:
        """A synced batch norm sharing `bn`'s parameter and buffer objects (optimisers keep working)."""
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            setattr(new, name, getattr(bn, name))
        return new.train(bn.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not active():
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        totals = _AllReduceSum.apply(torch.cat([x.sum(dims), x.new_tensor([x.numel() // x.shape[1]])]))
        count = totals[-1].detach()
        mean = totals[:-1] / count
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / count  # biased, as batch norm normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean, factor)
                self.running_var.lerp_(var * count / (count - 1), factor)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def sync_batch_norms(module: nn.Module) -> nn.Module:
    """Replace every batch norm inside `module` (site-specific copies included) by a SyncedBatchNorm, in place."""
    for name, child in module.named_children():
        if isinstance(child, _BatchNorm) and not isinstance(child, SyncedBatchNorm):
            setattr(module, name, SyncedBatchNorm.replacing(child))
        else:
            sync_batch_norms(child)
    return module


class _LossOf(nn.Module):
    """`method.loss` as a module call: DistributedDataParallel syncs gradients only after its own forward."""

    def __init__(self, method: nn.Module):
        super().__init__()
        self.method = method

    def forward(self, minibatches):
        return self.method.loss(minibatches)


def _this_rank(minibatches, size: int, rank_: int, where: torch.device):
    """This rank's rows of every site's batch, on its device (from pinned memory, without waiting, on a GPU)."""
    local = []
    for batch in minibatches:
        if batch is None:
            local.append(None)
            continue
        x, y = batch
        share = len(x) // size
        rows = slice(rank_ * share, (rank_ + 1) * share)
        x, y = x[rows], y[rows]
        if where.type == "cuda":
            x, y = x.pin_memory(), y.pin_memory()
        local.append((x.to(where, non_blocking=True), y.to(where, non_blocking=True)))
    return local


def _normalized(minibatches, where: torch.device):
    """uint8 crops made network input on the device (float batches pass as they are), in the training layout."""
    return [None if b is None else (prepare_input(normalize(b[0]) if b[0].dtype == torch.uint8 else b[0], where), b[1])
            for b in minibatches]


def make_update(method: nn.Module, requested_device: str = "auto") -> Callable[[list], dict[str, torch.Tensor]]:
    """The function that trains `method` on one step's minibatches in this process; returns its stats
    (tensors on the device: reading them waits for the device, so the trainer reads them once in a while).

    Minibatches hold uint8 crops (B, s, s) or normalised float images. Sets the layers and memory layout
    for the device (crosssite.runtime) and moves the method there (see `device`). On a CUDA GPU the
    step is replayed as a CUDA graph (crosssite.capture) unless `config.cuda_graphs` is off or the
    precision is bf16.
    Under torchrun it also syncs the batch norms, wraps the method in DistributedDataParallel and
    trains on this rank's share of each site's batch; the stats returned are averaged over ranks.
    Call it before loading an optimiser state (the state must land on the method's device).
    """
    where = device(requested_device)
    check_precision(method.config.precision, where)
    prepare_model(method, where)
    if where.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: cuDNN's fastest algorithm, found once
    if not active():
        def upload(minibatches):
            return _this_rank(minibatches, 1, 0, where)

        def step(minibatches):
            return method.update(_normalized(minibatches, where))

        # bf16 is left eager: on one H100 its captured steps drifted from the eager ones (issue 11, README)
        if where.type == "cuda" and method.config.cuda_graphs and method.config.precision == "fp32":
            return CapturedUpdate(method, upload, step)
        return lambda minibatches: step(upload(minibatches))

    size, rank_ = world_size(), rank()
    if method.config.batch_per_site % size:
        raise CrossSiteError(f"--batch-per-site {method.config.batch_per_site} does not split evenly "
                             f"over {size} processes")
    sync_batch_norms(method).to(where)
    ddp = DistributedDataParallel(_LossOf(method), device_ids=[where] if where.type == "cuda" else None,
                                  forward_sync_buffers=False)  # synced batch norms keep buffers equal

    def update(minibatches) -> dict[str, torch.Tensor]:
        method.release_gradients()
        with method.precision():
            loss, stats = ddp(_normalized(_this_rank(minibatches, size, rank_, where), where))
        finite = torch.isfinite(loss.detach()).to(torch.float32)
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)  # every rank skips together, none waits in backward
        method.step(loss, finite=finite.bool())
        values = torch.stack(list(stats.values())).double()
        dist.all_reduce(values)
        return dict(zip(stats, values / size))

    return update
