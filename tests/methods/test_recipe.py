"""DEVELOPERS.md's "Adding a method", followed in a test: one class and one `@register` line make a
method that trains, checkpoints, reloads and shows up on the command line, with no other edit."""

import pytest
import torch
import torch.nn.functional as F

from conftest import site_minibatches

from crosssite.checkpoint import load_trained, save_checkpoint
from crosssite.cli import build_parser
from crosssite.config import TrainConfig
from crosssite.methods import METHODS
from crosssite.methods.base import Method, present
from crosssite.methods.registry import register

SMALL = TrainConfig(method="trial", image_size=32, width=0.125, batch_per_site=4, lr=1e-3)


@pytest.fixture()
def trial():
    @register("trial")
    class Trial(Method):
        """Joint training with a loss weighted by site (a made-up method: what matters is what it takes)."""

        def __init__(self, num_sites, config):
            super().__init__(num_sites, config)
            self.net = self.make_backbone()
            self._finish_init()

        def loss(self, minibatches):
            losses = [F.cross_entropy(self.net(x), y) * (site + 1) for site, x, y in present(minibatches)]
            loss = torch.stack(losses).mean()
            return loss, {"loss": loss.detach()}

        def predict(self, x, site):
            self.check_site(site)
            return self.net(x)

    yield Trial
    del METHODS["trial"]


def test_a_registered_method_trains_checkpoints_and_is_offered(trial, tmp_path, capsys):
    method = METHODS["trial"](2, SMALL)
    batches = site_minibatches(size=32, shift=0.0)
    before = [p.detach().clone() for p in method.parameters()]
    assert torch.isfinite(method.update(batches)["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, method.parameters()))
    save_checkpoint(tmp_path / "trial.pt", method, SMALL, ["a", "b"])
    again = load_trained(tmp_path / "trial.pt", expect_method="trial")
    method.eval()
    assert torch.allclose(again.method.predict(batches[0][0], 1), method.predict(batches[0][0], 1))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    assert "trial" in capsys.readouterr().out  # --method's help lists the registry
