"""The real deployment on 127.0.0.1: a TLS SuperLink with SuperNode authentication, one SuperNode per site
reading only its own folder, `flwr run` of crosssite's ServerApp and ClientApp; the same losses as in-machine."""

import json
import os
import time

import pytest

from crosssite.data.sites import SAMPLE_DATA, load_sites

from conftest import tiny_fed

pytest.importorskip("flwr", reason="the deployment needs the [fed] extra")


def test_a_deployed_federation_over_tls_with_authenticated_nodes_equals_the_in_machine_one(fed_config, tmp_path,
                                                                                         monkeypatch):
    """What `crosssite federate --flower` runs (crosssite.federated.loopback.flower_federation), plus a stranger;
    with --data and --out relative to the working folder, as a user types them (the processes run elsewhere)."""
    from crosssite.federated.local import federate
    from crosssite.federated.loopback import flower_federation

    settings = tiny_fed()
    monkeypatch.chdir(tmp_path)
    config = fed_config("sepnorm", data=os.path.relpath(SAMPLE_DATA), out="deployed")
    sites = load_sites(SAMPLE_DATA, [])
    with flower_federation(config, settings) as deployment:
        # a SuperNode with a key of its own that nobody registered
        stranger = deployment.start_supernode("stranger", "stranger", SAMPLE_DATA / "covid-ct", tmp_path / "stranger")
        # the in-machine run to compare with, while the deployed one waits on its messages
        local = federate(config.replace(out=str(tmp_path / "local")), settings, progress=False)
        summary = deployment.wait(tmp_path / "deployed", timeout=400)
        # a SuperNode whose key is not registered is refused: it gives up, and no site of that name took part
        deadline = time.time() + 60
        while stranger.poll() is None and time.time() < deadline:
            time.sleep(1)
        assert stranger.poll() not in (None, 0)
        refusals = (tmp_path / "deployed" / "flower" / "superlink.log").read_text()
        assert "activate-node" in refusals and "Attempted to register SuperNode with public key" in refusals
    assert set(summary["sites"]) == set(sites)
    assert json.dumps(summary["sites"], sort_keys=True) == json.dumps(local["sites"], sort_keys=True)  # counts stay ints

    def losses(out):
        return {name: [(r["round"], r["loss"], r["val_mean_auc"]) for r in
                       map(json.loads, (out / name / "train_log.jsonl").read_text().splitlines())] for name in sites}
    assert losses(tmp_path / "deployed") == losses(tmp_path / "local")
    # every message is a fresh process: each site decoded its images once and kept them (the losses above
    # are the same with them); the in-machine sites keep theirs in memory
    assert all((tmp_path / "deployed" / name / "decoded.npz").is_file() for name in sites)
    assert not any((tmp_path / "local" / name / "decoded.npz").exists() for name in sites)
    log = [json.loads(line) for line in (tmp_path / "deployed" / "federation_log.jsonl").read_text().splitlines()]
    assert [sorted(r["took_part"]) for r in log] == [sorted(sites)] * 2
