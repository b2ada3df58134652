"""What leaves a site: every message of a federated contrastive run, inspected."""

import numbers

import torch

from crosssite.federated.contrast import FederatedContrastive
from crosssite.federated.local import InProcess, federate
from crosssite.federated.site import build_method
from crosssite.federated.state import local_keys
from crosssite.models.covidnet import PROJ_DIM

from conftest import site_minibatches, tiny_fed


def recording(messages):
    """A transport wrapper that keeps every message sent and every reply."""
    def wrap(inner: InProcess):
        class Recorded(InProcess):
            def fit(self, instructions):
                messages.extend(instructions.values())
                return self._kept(inner.fit(instructions))

            def evaluate(self, instructions):
                messages.extend(instructions.values())
                return self._kept(inner.evaluate(instructions))

            def finish(self, sites):
                return self._kept(inner.finish(sites))

            def _kept(self, replies):
                messages.extend(replies)
                return replies
        return Recorded(inner.trainers)
    return wrap


def test_no_message_carries_a_site_specific_tensor_or_a_per_image_value(fed_config):
    messages = []
    config = fed_config("contrastive")
    federate(config, tiny_fed(), progress=False, transport=recording(messages))
    method = build_method(config)
    state = method.state_dict()
    shared = {k: tuple(v.shape) for k, v in state.items() if k not in local_keys(method)}
    kinds = {type(m).__name__ for m in messages}
    assert kinds == {"FitIns", "FitRes", "EvaluateIns", "EvaluateRes"} and len(messages) == 2 * 2 * 4 + 2
    class_means = 0
    for m in messages:
        for name, tensor in m.tensors().items():
            kind, _, key = name.partition(".")
            if kind == "shared":  # exactly the shared state: no site batch norm, nothing else
                assert key in shared and tuple(tensor.shape) == shared[key] and tensor.dtype == state[key].dtype, name
            else:  # a class mean: one vector of the projection's width per class, never per image
                assert kind in ("extras", "peers") and key.rsplit("/", 1)[-1] in ("class_0", "class_1"), name
                assert tuple(tensor.shape) == (PROJ_DIM,), name
                class_means += 1
        if hasattr(m, "shared"):
            assert set(m.shared) == set(shared)
        for values in [getattr(m, "stats", {}), getattr(m, "metrics", {})]:
            assert all(isinstance(v, numbers.Number) for v in values.values())
    # round 1: each site sends 2 means; round 2: each receives the other's 2 and sends 2 again
    assert class_means == 2 * 2 + 2 * 2 + 2 * 2


def test_float16_transfer_sends_every_shared_weight_as_float16_and_trains(fed_config):
    """--transfer float16: both ways, every floating shared tensor travels as float16 (counters as they are);
    the coordinator averages and keeps float32; the sites train."""
    messages = []
    config = fed_config("joint")  # FedAvg: batch-norm statistics and their integer counters travel too
    federate(config, tiny_fed(rounds=1, transfer="float16"), progress=False, transport=recording(messages))
    state = build_method(config).state_dict()
    sent = [t for m in messages for t in getattr(m, "shared", {}).items()]
    assert len(sent) == 3 * 2 * len(state)  # the fit and evaluate instructions and the fit replies of both sites
    assert all(t.dtype == (torch.float16 if state[k].is_floating_point() else state[k].dtype) for k, t in sent)
    assert any(not state[k].is_floating_point() for k, _ in sent)
    server = torch.load(f"{config.out}/server.pt", weights_only=True)["shared"]
    assert all(v.dtype == state[k].dtype for k, v in server.items())  # averaged and kept in float32
    assert any(not torch.equal(v, state[k]) for k, v in server.items() if v.is_floating_point())


def test_the_federated_contrastive_term_uses_other_sites_class_means(fed_config):
    method = build_method(fed_config("contrastive"))
    assert isinstance(method, FederatedContrastive)
    x, y = site_minibatches(size=32, n=8)[0]
    torch.manual_seed(0)
    alone = method.loss([(x, y)])[1]["contrastive"]
    means = method.class_means()
    assert set(means) == {"class_0", "class_1"} and means["class_0"].shape == (PROJ_DIM,)
    method.peers = {"other/class_0": torch.randn(PROJ_DIM), "other/class_1": torch.randn(PROJ_DIM)}
    with_peers = method.loss([(x, y)])[1]["contrastive"]
    assert not torch.isclose(alone, with_peers)
