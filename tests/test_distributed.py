"""Two CPU processes (gloo) train what one process trains with the same global batch."""

import csv
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from conftest import site_minibatches

from crosssite import distributed
from crosssite import train as train_module
from crosssite.config import TrainConfig
from crosssite.data.sites import SAMPLE_DATA
from crosssite.io import read_jsonl
from crosssite.methods import METHODS, create_method

STEPS = 3
TINY = dict(image_size=32, width=0.0625, batch_per_site=8, lr=1e-3)


def _minibatches(step: int):
    """The global batch of a step: 8 images per site, both classes, sites on different scales."""
    return site_minibatches(seed=step, n=8, size=32, scale=1.0)


def _initial_state(name: str) -> dict:
    torch.manual_seed(0)
    return create_method(name, 2, TrainConfig(method=name, **TINY)).state_dict()


def _train_steps(name: str):
    """(gradients of the first step, weights and buffers after STEPS updates, per-step stats) from seed 0.

    One thread, in the workers and in the single-process reference alike: the comparison is of one
    process against two, not of thread counts (which change the order of float sums too).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_steps_one_thread(name)
    finally:
        torch.set_num_threads(threads)


def _train_steps_one_thread(name: str):
    torch.manual_seed(0)
    method = create_method(name, 2, TrainConfig(method=name, **TINY))
    method.train()
    make_update = distributed.make_update(method)

    def update(minibatches):
        return {k: float(v) for k, v in make_update(minibatches).items()}

    stats = [update(_minibatches(0))]
    grads = {k: p.grad.clone() for k, p in method.named_parameters()}
    stats += [update(_minibatches(step)) for step in range(1, STEPS)]
    return grads, {k: v.detach().clone() for k, v in method.state_dict().items()}, stats


def _worker(rank: int, out: str):
    """One of 2 CPU processes: the steps of every method, then a killed and resumed training run."""
    dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank, world_size=2)
    torch.set_num_threads(1)  # two processes on the CPU's cores
    torch.save({name: _train_steps(name) for name in sorted(METHODS)}, f"{out}/steps.{rank}")
    shares = []
    result = distributed.spread(np.arange(7), lambda part: shares.append(part.tolist()) or part * 10)
    torch.save({"result": result.tolist(), "shares": shares}, f"{out}/spread.{rank}")
    _train_killed_and_resumed(out)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """The folder the 2 workers wrote to (spawned once: starting processes is the slow part)."""
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(out),), nprocs=2)
    return out


def test_two_processes_take_the_same_steps_as_one(two_processes):
    """Each rank holds 4 + 4 of the 8 + 8 images of a step; every method, every rank.

    Gradients and losses agree to float rounding. Raw weights agree to a small fraction of how far
    they moved, not elementwise: Adam divides each gradient by its own running magnitude, so where
    the exact gradient is zero (a conv bias right before a batch norm) it turns the rounding noise
    of summing 4 + 4 instead of 8 rows into full-size steps in either direction.
    """
    ranks = [torch.load(two_processes / f"steps.{r}", weights_only=True) for r in range(2)]
    for name in sorted(METHODS):
        single_grads, single_state, single_stats = _train_steps(name)
        start = _initial_state(name)
        floats = [k for k, v in single_state.items() if v.is_floating_point()]
        moved = sum((single_state[k] - start[k]).abs().sum() for k in floats)
        assert moved > 0
        largest = max(g.abs().max() for g in single_grads.values())
        for grads, state, stats in (ranks[0][name], ranks[1][name]):
            for k, g in single_grads.items():
                torch.testing.assert_close(grads[k], g, rtol=1e-3, atol=1e-4 * largest, msg=f"{name}: grad {k}")
            # the first step starts from the same weights: its losses agree to float rounding; later
            # steps start from weights that Adam has moved apart (see above), so their losses agree
            # only as closely as the weights do
            assert stats[0] == pytest.approx(single_stats[0], rel=1e-4, abs=1e-5), name
            for got, want in zip(stats[1:], single_stats[1:], strict=True):
                assert got == pytest.approx(want, rel=1e-2), name
            assert state.keys() == single_state.keys()
            apart = sum((state[k] - single_state[k]).abs().sum() for k in floats)
            assert apart < 1e-2 * moved, f"{name}: weights {apart / moved:.2%} of their change apart"
        # the batch norms were synced: both ranks hold the same running statistics
        for k in floats:
            if "running" in k:
                torch.testing.assert_close(ranks[0][name][1][k], ranks[1][name][1][k], rtol=0, atol=0)


def test_validation_work_is_shared_out_and_gathered_in_order(two_processes):
    for rank in range(2):
        saved = torch.load(two_processes / f"spread.{rank}", weights_only=True)
        assert saved["shares"] == [list(range(rank, 7, 2))]  # each process predicts only its share
        assert saved["result"] == [10 * i for i in range(7)]  # and every process gets all, in order


def _cli_run(tmp_path, name: str, launcher: list[str]) -> str:
    flags = ["train", "--data", str(SAMPLE_DATA), "--image-size", "32", "--width", "0.125", "--epochs", "1",
             "--method", "contrastive", "--quiet", "--out", str(tmp_path / name)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # its own process group, so that a hung run's workers are killed with it
    proc = subprocess.Popen([*launcher, *flags], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    return stdout


def test_torchrun_writes_what_one_process_writes(tmp_path):
    _cli_run(tmp_path, "single", [sys.executable, "-m", "crosssite"])
    both = _cli_run(tmp_path, "torchrun", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                           "--nproc-per-node", "2", "-m", "crosssite"])
    assert both.count("test metrics of") == 1  # only rank 0 prints
    one, two = tmp_path / "single", tmp_path / "torchrun"
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    config = [yaml.safe_load((d / "config.yaml").read_text()) for d in (one, two)]
    assert {**config[0], "out": ""} == {**config[1], "out": ""}
    assert (one / "split.json").read_text() == (two / "split.json").read_text()
    # 6 steps apart, the two runs differ by float rounding amplified by Adam (see the test above)
    logs = [read_jsonl(d / "train_log.jsonl") for d in (one, two)]
    assert len(logs[0]) == len(logs[1]) == 1
    for key in ("loss", "ce", "contrastive"):
        assert logs[1][0][key] == pytest.approx(logs[0][0][key], rel=1e-2)
    predictions = [list(csv.DictReader((d / "predictions.csv").open())) for d in (one, two)]
    assert [r["path"] for r in predictions[0]] == [r["path"] for r in predictions[1]]
    assert max(abs(float(a["p_covid"]) - float(b["p_covid"])) for a, b in zip(*predictions)) < 2e-3
    weights = [torch.load(d / "last.pt", weights_only=True)["model"] for d in (one, two)]
    torch.manual_seed(0)  # the initial weights, as train() makes them
    start = create_method("contrastive", 2, TrainConfig(**config[0])).state_dict()
    floats = [k for k, v in start.items() if v.is_floating_point()]
    moved = sum((weights[0][k] - start[k]).abs().sum() for k in floats)
    assert sum((weights[1][k] - weights[0][k]).abs().sum() for k in floats) < 3e-2 * moved


def _train_killed_and_resumed(out: str):
    """Train 2 epochs in `out`/whole; and in `out`/killed, killed after epoch 1 and resumed."""
    config = TrainConfig(method="contrastive", data=str(SAMPLE_DATA), epochs=2, **TINY)
    train_module.train(config.replace(out=f"{out}/whole"), progress=False)
    killed = config.replace(out=f"{out}/killed")
    real_evaluate = train_module.evaluate_part
    calls = []

    def evaluate_then_die(*args, **kwargs):  # every rank dies in the validation of epoch 2
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    train_module.evaluate_part = evaluate_then_die
    try:
        train_module.train(killed, progress=False)
    except KeyboardInterrupt:
        pass
    finally:
        train_module.evaluate_part = real_evaluate
    distributed.barrier()
    train_module.train(killed, resume=True, progress=False)


def test_two_processes_resume_a_killed_run(two_processes):
    assert [r["epoch"] for r in read_jsonl(two_processes / "killed" / "train_log.jsonl")] == [1, 2]
    whole, resumed = (torch.load(two_processes / d / "last.pt", weights_only=True)["model"] for d in ("whole", "killed"))
    assert whole.keys() == resumed.keys()
    for k, v in whole.items():
        torch.testing.assert_close(resumed[k], v, rtol=0, atol=0, msg=k)
