"""Checkpoints: foreign or damaged files refused in one line, a failed save keeps the old file."""

import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from crosssite.checkpoint import load_checkpoint, load_trained, save_checkpoint
from crosssite.config import TrainConfig
from crosssite.errors import CheckpointError, CrossSiteError
from crosssite.methods import create_method

CONFIG = TrainConfig(image_size=32, width=0.125)


@pytest.fixture()
def saved(tmp_path):
    path = tmp_path / "ok.pt"
    save_checkpoint(path, create_method("joint", 2, CONFIG), CONFIG, ["a", "b"], epoch=1)
    return path


class Payload:
    def __reduce__(self):  # what a hostile checkpoint carries: a call made while unpickling
        return (print, ("code ran",))


def test_checkpoint_carrying_code_is_refused_without_torch_warnings(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": "crosssite-checkpoint", "x": Payload()}, path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError, match="could run code; refused"):
            load_checkpoint(path)
    assert caught == [] and "code ran" not in capsys.readouterr().out


@pytest.mark.parametrize("key", ["config", "model", "site_names", "method"])
def test_checkpoint_missing_a_key_is_damaged(saved, key):
    payload = torch.load(saved, weights_only=True)
    del payload[key]
    torch.save(payload, saved)
    with pytest.raises(CheckpointError, match=f"damaged checkpoint .*{key}"):
        load_checkpoint(saved)


def test_checkpoint_with_a_bad_config_is_refused(saved):
    payload = torch.load(saved, weights_only=True)
    payload["config"]["epochs"] = "ten"
    torch.save(payload, saved)
    with pytest.raises(CheckpointError, match="unusable checkpoint .*epochs"):
        load_trained(saved)


def test_a_save_that_fails_for_lack_of_space_keeps_the_old_file(saved):
    """A file-size limit stands in for a full disk: the write fails part-way (torch raises RuntimeError)."""
    before = saved.read_bytes()
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from crosssite.checkpoint import save_checkpoint
        from crosssite.config import TrainConfig
        from crosssite.errors import CrossSiteError
        from crosssite.methods import create_method
        config = TrainConfig(image_size=32, width=0.5)  # larger than the old file
        method = create_method("joint", 2, config)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({len(before)}, {len(before)}))
        try:
            save_checkpoint({str(saved)!r}, method, config, ["a", "b"])
        except CrossSiteError as e:
            print(e)
            sys.exit(2)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stdout.startswith(f"{saved}: cannot write") and done.stdout.count("\n") == 1
    assert saved.read_bytes() == before
    assert sorted(p.name for p in saved.parent.iterdir()) == ["ok.pt"]  # no temporary file left


def test_load_trained_rebuilds_the_method_and_resolves_sites(saved):
    original = create_method("joint", 2, CONFIG)
    original.load_state_dict(torch.load(saved, weights_only=True)["model"])
    trained = load_trained(saved, "cpu", expect_method="joint")
    assert trained.config == CONFIG and trained.site_names == ["a", "b"] and trained.payload["epoch"] == 1
    assert not trained.method.training
    for key, value in original.state_dict().items():
        assert torch.equal(trained.method.state_dict()[key], value)
    assert trained.site_index("b") == 1
    with pytest.raises(CrossSiteError, match=r"unknown site 'c'; this checkpoint knows a, b\..*crosssite adapt"):
        trained.site_index("c")
    with pytest.raises(CheckpointError, match="expected 'sepnorm'"):
        load_trained(saved, expect_method="sepnorm")


def test_add_site_grows_every_site_batch_norm(tmp_path):
    method = create_method("sepnorm", 2, CONFIG)
    before = [bn.weight.clone() for bn in method.site_batch_norms(1)]
    assert method.add_site() == 2 and method.num_sites == 3
    assert len(method.site_batch_norms(2)) == len(before) > 0
    assert all(torch.equal(b.weight, w) for b, w in zip(method.site_batch_norms(1), before))
    method.eval()
    assert method.predict(torch.randn(2, 3, 32, 32), 2).shape == (2, 2)
    with pytest.raises(ValueError, match="no site batch norm"):
        create_method("joint", 2, CONFIG).add_site()
