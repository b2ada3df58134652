"""The in-machine federation: the exactness anchor, resume, missing sites, usable site folders."""

import json

import pytest
import torch

from crosssite import distributed
from crosssite.data.sites import SAMPLE_DATA, load_sites
from crosssite.errors import CrossSiteError
from crosssite.federated.local import InProcess, federate
from crosssite.federated.messages import FitIns
from crosssite.federated.settings import FedSettings
from crosssite.federated.site import SiteTrainer, build_method, site_config
from crosssite.federated.state import average, local_keys, shared_state, site_prefixes
from crosssite.methods import create_method
from crosssite.train import seed_everything

from conftest import tiny_fed

TINY_FED = tiny_fed()


def test_one_round_of_one_sgd_step_equals_one_centralised_sepnorm_step(fed_config, tmp_path):
    """FedBN's anchor: each site's SGD step on its own batch, averaged uniformly, is the centralised SepNorm
    SGD step on the joint batch. The joint loss is the mean over both sites' rows, so it moves a site's own
    batch norms by half its site's gradient; the local loss by the whole: the centralised step gives the
    site-specific parameters K = 2 times the learning rate."""
    lr = 0.05  # round 1 of the cosine schedule trains at the configured lr
    config = fed_config("sepnorm", batch_per_site=4, lr=lr, grad_clip=1e9)  # no clipping: it acts on different norms
    settings = FedSettings(rounds=1, steps_per_round=1, weighting="uniform")
    sites, batches = [], []
    for name, site in load_sites(SAMPLE_DATA, []).items():
        trainer = SiteTrainer(site_config(config, name, site.root, tmp_path / name), settings)
        trainer.method.optimizer = torch.optim.SGD(trainer.method.parameters(), lr=lr, fused=True)
        step = trainer.update
        trainer.update = lambda minibatches, step=step: batches.append(minibatches[0]) or step(minibatches)
        sites.append(trainer)
    initial = shared_state(build_method(config))
    replies = [trainer.fit(FitIns(1, initial)) for trainer in sites]
    federated = average([r.shared for r in replies], [1.0, 1.0])

    seed_everything(config.seed)
    central = create_method("sepnorm", 2, config)
    assert all(torch.equal(v, initial[k]) for k, v in shared_state(central).items() if k in initial)
    own = local_keys(central)
    groups = [[p for k, p in central.named_parameters() if k not in own],
              [p for k, p in central.named_parameters() if k in own]]
    central.optimizer = torch.optim.SGD([{"params": groups[0], "lr": lr}, {"params": groups[1], "lr": 2 * lr}],
                                        fused=True)
    distributed.make_update(central, "cpu")(batches)

    after = central.state_dict()
    assert set(federated) == set(after) - own
    for key, value in federated.items():  # shared weights and buffers
        torch.testing.assert_close(value, after[key], rtol=1e-5, atol=1e-6, msg=key)
    for index, trainer in enumerate(sites):  # each site's batch norms: statistics and affine parameters
        site_state = trainer.method.state_dict()
        for prefix in site_prefixes(central):
            for key in [k for k in site_state if k.startswith(prefix + "0.")]:
                central_key = prefix + f"{index}." + key[len(prefix) + 2:]
                torch.testing.assert_close(site_state[key], after[central_key], rtol=1e-5, atol=1e-6, msg=key)
    assert any(not torch.equal(federated[k], initial[k]) for k in federated)  # the step moved the weights


class Killed(Exception):
    pass


def killing(fail_at):
    """A transport wrapper that raises Killed at the (kind, round, site) `fail_at`, before that site answers."""
    def wrap(inner: InProcess):
        class Wrapped:
            sites = inner.sites

            def fit(self, instructions):
                return [self._one("fit", s, ins) for s, ins in instructions.items()]

            def evaluate(self, instructions):
                return [self._one("evaluate", s, ins) for s, ins in instructions.items()]

            def finish(self, sites):
                return inner.finish(sites)

            def _one(self, kind, site, ins):
                if (kind, ins.round, site) == fail_at:
                    raise Killed(fail_at)
                return getattr(inner, kind)({site: ins})[0]
        return Wrapped()
    return wrap


def outcome(out):
    server = torch.load(out / "server.pt", weights_only=True)
    logs = {s: [{k: r.get(k) for k in ("round", "loss", "val_mean_auc", "best")}
                for r in map(json.loads, (out / s / "train_log.jsonl").read_text().splitlines())]
            for s in ("covid-ct", "sars-cov-2-ct")}
    return server["shared"], json.loads((out / "summary.json").read_text())["sites"], logs


def test_a_killed_federation_resumes_to_the_same_result(fed_config, tmp_path):
    """Also: one process per site (`--processes`, the uninterrupted run here) equals all sites in one process."""
    config = fed_config("sepnorm")
    federate(config.replace(out=str(tmp_path / "whole")), TINY_FED, progress=False, processes=True)
    names = list(load_sites(SAMPLE_DATA, []))
    # killed after round 1 was averaged but before the second site validated it, then mid round 2
    for fail_at in [("evaluate", 1, names[1]), ("fit", 2, names[1])]:
        with pytest.raises(Killed):
            federate(config, TINY_FED, resume=True, progress=False, transport=killing(fail_at))
    federate(config, TINY_FED, resume=True, progress=False)
    whole_shared, whole_sites, whole_logs = outcome(tmp_path / "whole")
    shared, sites, logs = outcome(tmp_path / "fed")
    assert all(torch.equal(shared[k], v) for k, v in whole_shared.items())
    assert sites == whole_sites and logs == whole_logs
    with pytest.raises(CrossSiteError, match="holds a federation already"):
        federate(config, TINY_FED, progress=False)
    with pytest.raises(CrossSiteError, match="different settings .rounds"):
        federate(config, tiny_fed(rounds=3), resume=True, progress=False)


def dropping(site, round):
    """A transport wrapper in which `site` does not answer round `round`'s training."""
    def wrap(inner):
        class Wrapped(InProcess):
            def fit(self, instructions):
                return inner.fit({s: i for s, i in instructions.items() if (s, i.round) != (site, round)})
        return Wrapped(inner.trainers)
    return wrap


def test_a_missing_site_does_not_stop_the_round_and_the_log_says_who_took_part(fed_config):
    config = fed_config("sepnorm")
    names = list(load_sites(SAMPLE_DATA, []))
    with pytest.raises(CrossSiteError, match="1 of 2 sites replied"):
        federate(config, TINY_FED, progress=False, transport=dropping(names[1], 1))
    out = config.out + "-min1"
    federate(config.replace(out=out), tiny_fed(min_sites=1), progress=False,
             transport=dropping(names[1], 1))
    log = [json.loads(line) for line in open(f"{out}/federation_log.jsonl")]
    assert [(r["took_part"], r["missing"]) for r in log] == [([names[0]], [names[1]]), (sorted(names), [])]
    site_log = [json.loads(line) for line in open(f"{out}/{names[1]}/train_log.jsonl")]
    assert [r["round"] for r in site_log] == [2]


@pytest.mark.parametrize("method", ["joint", "sepnorm", "single", "series-adapter", "ms-net", "contrastive"])
def test_what_stays_at_a_site_is_chosen_by_module_type(method, fed_config):
    """joint shares everything (FedAvg, its batch norms too); single nothing; the others keep exactly the
    copies of their site-specific layers: batch norms, adapters, per-site heads."""
    m = build_method(fed_config(method))
    own, every = local_keys(m), set(m.state_dict())
    if method == "joint":
        assert not own and any("running_mean" in k for k in shared_state(m))
    elif method == "single":
        assert own == every
    else:
        assert own and every - own
        assert all(".bns.0." in k or ".adapters.0." in k or ".copies.0." in k for k in own)
        assert not any("running_mean" in k for k in shared_state(m))
        assert (method != "series-adapter") or any(".adapters.0." in k for k in own)
        assert (method != "ms-net") or any("aux_classifier.copies.0." in k for k in own)



def test_a_sites_next_process_loads_its_decoded_images_instead_of_decoding(fed_config, tmp_path, monkeypatch):
    """Under Flower each message starts a fresh process: the site keeps its decoded images in its folder."""
    from crosssite.data.images import DecodedCache

    config = fed_config("sepnorm")
    name, site = next(iter(load_sites(SAMPLE_DATA, []).items()))
    own = site_config(config, name, site.root, tmp_path / name)
    first = SiteTrainer(own, TINY_FED, keep_decoded=True)
    reply = first.fit(FitIns(1, shared_state(build_method(config))))
    assert (tmp_path / name / "decoded.npz").is_file()
    monkeypatch.setattr(DecodedCache, "original", lambda self, path: pytest.fail(f"decoded {path} again"))
    second = SiteTrainer(own, TINY_FED, resume=True, keep_decoded=True)
    for part in ("train", "val", "test"):
        for path in first.data.paths(name, part):
            if part == "train":
                assert (second.data.cache.train_image(path) == first.data.cache.train_image(path)).all()
            else:
                assert (second.data.cache.eval_image(path) == first.data.cache.eval_image(path)).all()
    assert second.fit(FitIns(1, {})).shared.keys() == reply.shared.keys()  # round 1 trained: the same reply
