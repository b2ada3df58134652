"""`crosssite adapt` (AdaBN for a new site), predicting for it, `--site auto` and `evaluate --as-site`."""

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import TINY_TRAIN_FLAGS

from crosssite.adapt import estimate_bn_statistics
from crosssite.checkpoint import load_checkpoint, load_trained, save_checkpoint
from crosssite.cli import SAMPLE_DATA, main
from crosssite.data.images import DecodedCache
from crosssite.models.site_bn import SiteBatchNorm



def train(out, method, epochs=3):
    assert main(["train", "--method", method, "--data", str(SAMPLE_DATA), "--epochs", str(epochs), *TINY_TRAIN_FLAGS,
                 "--out", str(out)]) == 0
    return out / "best.pt"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return train(tmp_path_factory.mktemp("adapt") / "sepnorm", "sepnorm")


@pytest.fixture(scope="module")
def flat_folder(tmp_path_factory):
    """Site B's images in one folder, no class subfolders: unlabelled."""
    folder = tmp_path_factory.mktemp("unlabelled")
    for cls in ("CT_COVID", "CT_NonCOVID"):
        for p in (SAMPLE_DATA / "covid-ct" / cls).iterdir():
            shutil.copy(p, folder / f"{cls}_{p.name}")
    return folder


@pytest.fixture(scope="module")
def adapted(ckpt, flat_folder):
    out = ckpt.parent / "adapted.pt"
    assert main(["adapt", str(ckpt), "--site", f"hospital-c={flat_folder}", "--out", str(out)]) == 0
    return out


def test_only_the_new_sites_bn_buffers_are_new(ckpt, adapted, flat_folder):
    old, new = load_checkpoint(ckpt)["model"], load_checkpoint(adapted)["model"]
    for key, value in old.items():
        assert torch.equal(new[key], value), key  # every trained weight and statistic kept exactly
    added = set(new) - set(old)
    assert added and all(".bns.2." in k for k in added)
    for key in [k for k in added if k.endswith(".bns.2.weight")]:
        mean = (old[key.replace(".bns.2.", ".bns.0.")] + old[key.replace(".bns.2.", ".bns.1.")]) / 2
        assert torch.allclose(new[key], mean)
    means = [new[k] for k in added if k.endswith("running_mean")]
    assert any(m.abs().sum() > 0 for m in means)  # statistics estimated, not left at their reset value
    payload = load_checkpoint(adapted)
    assert payload["site_names"] == ["sars-cov-2-ct", "covid-ct", "hospital-c"]
    (record,) = payload["adaptations"]
    assert record["site"] == "hospital-c" and record["images"] == len(list(flat_folder.iterdir()))
    assert str(flat_folder.resolve()) == record["source"] and record["date"]


def test_adabn_statistics_are_the_images_statistics(ckpt):
    trained = load_trained(ckpt)
    method, config = trained.method, trained.config
    paths = sorted((SAMPLE_DATA / "covid-ct" / "CT_COVID").iterdir())
    images = DecodedCache(config.image_size, config.window).eval_batch(paths)
    first = next(m for m in method.modules() if isinstance(m, SiteBatchNorm))
    seen = []
    handle = first.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0]))
    before = {k: v.clone() for k, v in method.state_dict().items() if ".bns.0." not in k}
    estimate_bn_statistics(method, 0, images, batch_size=len(images))  # one batch: exact statistics
    handle.remove()
    x = seen[0]
    assert torch.allclose(first.bns[0].running_mean, x.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(first.bns[0].running_var, x.var((0, 2, 3), unbiased=True), rtol=1e-4)
    assert first.bns[0].momentum == 0.1 and not first.bns[0].training
    after = method.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_predict_uses_the_adapted_site(adapted, flat_folder, capsys):
    images = sorted(flat_folder.iterdir())[:4]
    assert main(["predict", str(adapted), "--site", "hospital-c", "--json", *map(str, images)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in rows] == [str(p) for p in images]
    # the new site's batch norms give other probabilities than an old site's
    assert main(["predict", str(adapted), "--site", "covid-ct", "--json", *map(str, images)]) == 0
    old_rows = json.loads(capsys.readouterr().out)
    assert not np.allclose([r["p_covid"] for r in rows], [r["p_covid"] for r in old_rows])


def test_unknown_site_error_says_adapt(ckpt, flat_folder, capsys):
    assert main(["predict", str(ckpt), "--site", "hospital-c", str(next(flat_folder.iterdir()))]) == 2
    err = capsys.readouterr().err
    assert "unknown site 'hospital-c'" in err and "crosssite adapt" in err and "--site auto" in err


@pytest.fixture(scope="module")
def settled(ckpt):
    """The sepnorm checkpoint with each site's statistics estimated on all its images (as after long
    training; three tiny epochs leave the running averages close to their initial values)."""
    trained = load_trained(ckpt)
    method, config, names = trained.method, trained.config, trained.site_names
    cache = DecodedCache(config.image_size, config.window)
    for index, name in enumerate(names):
        estimate_bn_statistics(method, index, cache.eval_batch(sorted((SAMPLE_DATA / name).glob("*/*.png"))))
    out = ckpt.parent / "settled.pt"
    save_checkpoint(out, method, config, names)
    return out


@pytest.mark.parametrize("site, folder", [("sars-cov-2-ct", "sars-cov-2-ct/COVID"), ("covid-ct", "covid-ct/CT_COVID")])
def test_auto_picks_the_site_the_images_come_from(settled, capsys, site, folder):
    images = sorted((SAMPLE_DATA / folder).iterdir())
    assert main(["predict", str(settled), "--site", "auto", "--json", *map(str, images)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["site"] for r in rows} == {site}
    distances = rows[0]["bn_distance"]
    assert distances[site] == min(distances.values())
    assert main(["predict", str(settled), "--site", site, "--json", *map(str, images)]) == 0
    explicit = json.loads(capsys.readouterr().out)
    assert [r["p_covid"] for r in rows] == pytest.approx([r["p_covid"] for r in explicit])


def test_joint_checkpoint_refused(tmp_path, flat_folder, capsys):
    joint = train(tmp_path / "joint", "joint", epochs=1)
    assert main(["adapt", str(joint), "--site", f"c={flat_folder}", "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert "joint" in err and "no site-specific batch norm" in err and not (tmp_path / "x.pt").exists()
    assert main(["predict", str(joint), "--site", "auto", str(next(flat_folder.iterdir()))]) == 2
    assert "site-specific batch norm" in capsys.readouterr().err


def test_adapt_errors(ckpt, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["adapt", str(ckpt), "--site", f"c={empty}", "--out", str(tmp_path / "x.pt")]) == 2
    assert str(empty) in capsys.readouterr().err
    assert main(["adapt", str(ckpt), "--site", f"covid-ct={SAMPLE_DATA / 'covid-ct'}", "--out", str(tmp_path / "x.pt")]) == 2
    assert "already has a site 'covid-ct'" in capsys.readouterr().err
    one = sorted((SAMPLE_DATA / "covid-ct" / "CT_COVID").iterdir())[0]
    assert main(["adapt", str(ckpt), "--site", f"c={one}", "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds 1 image(s)" in err and "\n" not in err and not (tmp_path / "x.pt").exists()


def test_evaluate_an_unseen_site_as_known_and_adapted(ckpt, adapted, capsys):
    site_b = f"hospital-c={SAMPLE_DATA / 'covid-ct'}"  # Site B again, under a name neither run knows
    assert main(["evaluate", str(ckpt), "--site", site_b, "--part", "all", "--json"]) == 2
    assert "crosssite adapt" in capsys.readouterr().err
    assert main(["evaluate", str(ckpt), "--site", site_b, "--as-site", "covid-ct", "--part", "all", "--json"]) == 0
    as_b = json.loads(capsys.readouterr().out)
    assert as_b["sites"]["hospital-c"]["n"] == len(list((SAMPLE_DATA / "covid-ct").glob("CT_*/*")))
    assert main(["evaluate", str(ckpt), "--site", f"covid-ct={SAMPLE_DATA / 'covid-ct'}", "--part", "all", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sites"]["covid-ct"] == pytest.approx(as_b["sites"]["hospital-c"])
    assert main(["evaluate", str(adapted), "--site", site_b, "--part", "all", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sites"]["hospital-c"]["n"] == as_b["sites"]["hospital-c"]["n"]
