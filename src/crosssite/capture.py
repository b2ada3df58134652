"""A whole training step replayed as one CUDA graph: one launch per step instead of ~1,800.

At the paper's batch size a GPU step is bound by launching operations, not by arithmetic (issue 11).
`CapturedUpdate` runs the first `WARMUP_STEPS` steps eagerly on a side stream (cuDNN picks its
algorithms, Adam creates its state), then records one whole step (normalisation, forward, backward,
gradient clipping, the divergence mark, Adam) with `torch.cuda.graph` and from then on copies each
step's batch into the recorded input tensors and replays the graph. What makes the step replayable:
it never waits for the host (crosssite.methods.base: the non-finite check lives on the device), every
step has the same shapes (each site sends `batch_per_site` images), and Adam reads its learning rate
from a device tensor that is refilled before each replay, so the schedule keeps working.

Anything that goes wrong while recording falls back to the eager step, with a warning on stderr: a
run is never lost to the graph. tests/test_capture.py checks the fallback on the CPU; the graph's
equality with the eager step is checked on a GPU by benchmarks/gpu_check.py.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch

#: eager steps before recording (PyTorch's CUDA graph notes: warm up on a side stream first)
WARMUP_STEPS = 3


class CapturedUpdate:
    """`update(minibatches)` as a replayed CUDA graph after a few eager steps; see the module docstring.

    `upload(minibatches)` puts one step's host batches on the device; `step(device_minibatches)` trains
    on them (the method's update) and returns its logged values.
    """

    def __init__(self, method, upload: Callable, step: Callable, warmup: int = WARMUP_STEPS):
        self.method = method
        self.upload = upload
        self.step = step
        self.warmup = warmup
        self.steps_done = 0
        self.graph = None
        self.failed = False

    def __call__(self, minibatches) -> dict[str, torch.Tensor]:
        if self.failed:
            return self.step(self.upload(minibatches))
        if self.steps_done < self.warmup:
            self.steps_done += 1
            return self._on_side_stream(minibatches)
        if self.graph is None:
            try:
                self._record(minibatches)
            except Exception as e:  # any failure to record: train on, eagerly, and say so
                self._give_up(e)
                return self.step(self.upload(minibatches))
        elif [None if b is None else tuple(b[0].shape) for b in minibatches] != self.shapes:
            return self.step(self.upload(minibatches))  # not the recorded shapes (never in crosssite.train)
        else:
            for static, batch in zip(self.inputs, minibatches):
                if batch is not None:
                    static[0].copy_(batch[0].pin_memory(), non_blocking=True)
                    static[1].copy_(batch[1].pin_memory(), non_blocking=True)
        for lr, group in zip(self.lrs, self.method.optimizer.param_groups):
            lr.fill_(group["lr"])  # the schedule's current learning rate, read by the recorded Adam
        self.graph.replay()
        return {k: v.clone() for k, v in self.outputs.items()}

    def _on_side_stream(self, minibatches):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            stats = self.step(self.upload(minibatches))
        torch.cuda.current_stream().wait_stream(side)
        return stats

    def _record(self, minibatches) -> None:
        """Record one step on this step's batch (recording runs nothing; the caller replays it)."""
        self.shapes = [None if b is None else tuple(b[0].shape) for b in minibatches]
        self.inputs = self.upload(minibatches)
        optimizer = self.method.optimizer
        device = next(self.method.parameters()).device
        self.lrs = [torch.tensor(float(g["lr"]), device=device) for g in optimizer.param_groups]
        saved = [(g["lr"], g["capturable"]) for g in optimizer.param_groups]
        torch.cuda.synchronize()
        optimizer.zero_grad(set_to_none=True)  # the graph allocates the gradients it then keeps
        graph = torch.cuda.CUDAGraph()
        try:
            for group, lr in zip(optimizer.param_groups, self.lrs):
                group["lr"], group["capturable"] = lr, True
            with torch.cuda.graph(graph):
                self.outputs = self.step(self.inputs)
        finally:  # the optimizer's settings as saved in checkpoints stay plain numbers
            for group, (lr, capturable) in zip(optimizer.param_groups, saved):
                group["lr"], group["capturable"] = lr, capturable
        self.graph = graph

    def _give_up(self, error: Exception) -> None:
        self.failed, self.graph = True, None
        self.method.optimizer.zero_grad(set_to_none=True)
        print(f"crosssite: warning: recording the training step as a CUDA graph failed "
              f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
              "training goes on without it (--no-cuda-graphs skips the attempt)", file=sys.stderr, flush=True)
