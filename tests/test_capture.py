"""The CUDA graph step: off on a CPU, and a failure to record it falls back to the eager step, loudly.

That the recorded step equals the eager one is checked on a GPU (benchmarks/gpu_check.py).
"""

import pytest
import torch

from crosssite.capture import CapturedUpdate
from crosssite.config import TrainConfig
from crosssite.distributed import make_update
from crosssite.errors import CrossSiteError
from crosssite.methods import create_method


def method():
    torch.manual_seed(0)
    return create_method("contrastive", 2, TrainConfig(image_size=32, width=0.125, lr=1e-3))


def batches(step):
    g = torch.Generator().manual_seed(step)
    return [(torch.randint(0, 256, (4, 32, 32), dtype=torch.uint8, generator=g), torch.tensor([0, 1, 0, 1]))
            for _ in range(2)]


def test_a_cpu_run_never_records_a_graph():
    assert not isinstance(make_update(method()), CapturedUpdate)


def test_bf16_is_refused_on_a_cpu():
    bf16 = create_method("joint", 2, TrainConfig(image_size=32, width=0.125, precision="bf16"))
    with pytest.raises(CrossSiteError, match="bf16 needs a CUDA GPU"):
        make_update(bf16, "cpu")


def test_a_failed_recording_trains_on_eagerly_and_says_so(capsys):
    eager_method, graph_method = method(), method()
    eager = make_update(eager_method)
    inner = make_update(graph_method)  # the CPU's eager step, what CapturedUpdate falls back to
    captured = CapturedUpdate(graph_method, upload=lambda b: b, step=inner, warmup=0)
    for step in range(3):  # recording needs CUDA, which this machine lacks: every step runs eagerly
        want, got = eager(batches(step)), captured(batches(step))
        assert {k: float(v) for k, v in got.items()} == {k: float(v) for k, v in want.items()}
    assert captured.failed and captured.graph is None
    err = capsys.readouterr().err
    assert err.count("recording the training step as a CUDA graph failed") == 1 and "--no-cuda-graphs" in err
    for p, q in zip(eager_method.parameters(), graph_method.parameters()):
        assert torch.equal(p, q)
