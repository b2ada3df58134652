"""The command line re-executes itself once with glibc's malloc tunables; opting out and user settings are kept."""

import os
import platform
import subprocess
import sys

import pytest
import torch

from conftest import site_minibatches

from crosssite.runtime import MALLOC_TUNABLES, MARKER, OPT_OUT, prepare_input, prepare_model, tuned_environment

WANTED = ":".join(f"{k}={v}" for k, v in MALLOC_TUNABLES.items())
# what the child reports: its environment variable and how often this code ran in this PID's lifetime
CHILD = (
    "import os, sys; from crosssite.runtime import ensure_malloc_tuning; "
    "print('run', os.getpid(), flush=True); ensure_malloc_tuning(); "
    "print('tunables', os.environ.get('GLIBC_TUNABLES', ''))"
)


def _run(env_changes: dict) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", MARKER, OPT_OUT)}
    env.update(env_changes)
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.splitlines()


glibc = pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")


@glibc
def test_child_sees_the_tunables_after_one_re_exec():
    lines = _run({})
    runs = [line for line in lines if line.startswith("run")]
    assert len(runs) == 2 and runs[0] == runs[1]  # executed twice, in the same process (exec keeps the PID)
    assert lines[-1] == f"tunables {WANTED}"


@glibc
def test_opt_out_and_complete_settings_do_not_re_exec():
    lines = _run({OPT_OUT: "1"})
    assert lines == [lines[0], "tunables "]
    lines = _run({"GLIBC_TUNABLES": WANTED})
    assert len(lines) == 2 and lines[-1] == f"tunables {WANTED}"


def test_user_settings_are_kept_and_completed():
    env = tuned_environment({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=5:glibc.cpu.x86_ibt=on"})
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.mmap_max=5:glibc.cpu.x86_ibt=on:glibc.malloc.trim_threshold=34359738368"
    assert env[MARKER] == "1"
    assert tuned_environment(env) is None  # never a second time, even if glibc ignored the settings


def test_channels_last_layout_keeps_values_and_parameters():
    conv = torch.nn.Conv2d(3, 4, 3)
    weight = conv.weight
    prepare_model(conv)
    assert conv.weight is weight and conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 8, 8)
    y = prepare_input(x)
    assert torch.equal(x, y) and y.is_contiguous(memory_format=torch.channels_last)


def test_training_step_in_channels_last_matches_the_plain_step():
    """make_update (channels_last, crosssite's layers) and method.update of the same network in torch's
    own layers on NCHW tensors: same loss, same gradients."""
    from crosssite.config import TrainConfig
    from crosssite.distributed import make_update
    from crosssite.methods import create_method
    from crosssite.models.layers import as_torch_layers

    def method():
        torch.manual_seed(0)
        return create_method("contrastive", 2, TrainConfig(image_size=64, width=0.125))

    batches = site_minibatches(seed=1, shift=0.0)
    plain, ours = method(), method()
    as_torch_layers(plain)
    assert not [m for m in plain.modules() if type(m).__module__ == "crosssite.models.layers"]
    want = {k: float(v) for k, v in plain.update(batches).items()}
    got = {k: float(v) for k, v in make_update(ours)(batches).items()}
    assert got == pytest.approx(want, rel=1e-5)
    largest = max(p.grad.abs().max() for p in plain.parameters())
    for (name, p), q in zip(plain.named_parameters(), ours.parameters()):
        # channels_last sums a conv's weight gradient over ~10^5 pixels in another order: float32
        # rounding of that sum reaches ~2e-5 of the largest gradient on some CPUs (seen on AMD EPYC)
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-4 * largest, msg=name)
    assert ours.net.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
