"""DEVELOPERS.md's "Adding a backbone", followed in a test: a tiny network that meets the contract
(crosssite.models.contract.Backbone) and one `register_backbone` line are enough for the methods whose
needs it meets to train, checkpoint, reload and predict through the fast inference path."""

import numpy as np
import pytest
import torch
from torch import nn

from conftest import site_minibatches

from crosssite.checkpoint import load_trained, save_checkpoint
from crosssite.config import TrainConfig
from crosssite.data.transforms import to_tensor
from crosssite.errors import CrossSiteError
from crosssite.inference import predict_proba
from crosssite.methods import METHODS, create_method
from crosssite.models import MODELS, Backbone, COVIDNet, create_model, register_backbone, unregister_backbone
from crosssite.models.contract import BATCH_NORM, PROJECTION


class TinyNet(nn.Module):
    """conv -> BN -> ReLU, global average pool, a linear classifier and an optional linear projection."""

    def __init__(self, *, width, image_size, pepx_relu, projection, projection_head="bn-relu"):
        super().__init__()  # width, pepx_relu and projection_head mean nothing to this network
        self.image_size = image_size
        self.embedding_dim = 6
        self.stage = nn.Sequential(nn.Conv2d(3, self.embedding_dim, 3, stride=2, padding=1),
                                   nn.BatchNorm2d(self.embedding_dim), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(self.embedding_dim, 2)
        self.projection = nn.Linear(self.embedding_dim, 4) if projection else None

    @property
    def has_projection(self):
        return self.projection is not None

    @property
    def last_stage(self):
        return self.stage

    def features(self, x):
        return torch.flatten(self.pool(self.stage(x)), 1)

    def classify(self, emb):
        return self.classifier(emb)

    def project(self, emb):
        if self.projection is None:
            raise RuntimeError("built without a projection head")
        return self.projection(emb)

    def forward(self, x):
        return self.classify(self.features(x))


@pytest.fixture()
def tiny_backbone():
    register_backbone("tiny", TinyNet, (BATCH_NORM, PROJECTION))
    yield "tiny"
    unregister_backbone("tiny")


def test_both_covidnets_meet_the_contract():
    for name in MODELS:
        assert isinstance(create_model(name, width=0.125, image_size=32), Backbone)
    assert not isinstance(nn.Linear(2, 2), Backbone)


@pytest.mark.parametrize("size", [16, 24, 30, 32, 48, 100, 112])
def test_covidnets_build_exactly_the_image_sizes_the_config_accepts(size):
    try:
        TrainConfig(image_size=size).validate()
        accepted = True
    except CrossSiteError as exc:
        accepted = False
        assert "image_size must be a multiple of 16, at least 32" in str(exc)
    for name in MODELS:
        try:
            create_model(name, width=0.125, image_size=size)
            built = True
        except ValueError:
            built = False
        assert built == accepted, (name, size)


def test_methods_offer_the_backbones_whose_capabilities_they_need(tiny_backbone):
    assert isinstance(create_model("tiny", width=1.0, image_size=32, pepx_relu=False, projection=False), Backbone)
    assert METHODS["joint"].supported_backbones() == ("covidnet-redesign", "covidnet", "tiny")
    assert METHODS["contrastive"].supported_backbones() == ("covidnet-redesign", "tiny")
    assert METHODS["series-adapter"].supported_backbones() == ("covidnet-redesign",)  # tiny has no PEPX blocks
    with pytest.raises(CrossSiteError, match="'series-adapter' runs on backbone.s. covidnet-redesign, not 'tiny'"):
        create_method("series-adapter", 2, TrainConfig(method="series-adapter", backbone="tiny", image_size=32))


def test_a_network_missing_part_of_the_contract_is_refused(tiny_backbone):
    register_backbone("no-features", lambda **kwargs: nn.Conv2d(3, 2, 1))
    try:
        with pytest.raises(TypeError, match="does not meet"):
            create_method("joint", 2, TrainConfig(method="joint", backbone="no-features", image_size=32))
    finally:
        unregister_backbone("no-features")


@pytest.mark.parametrize("name", ["joint", "sepnorm", "contrastive"])
def test_methods_train_checkpoint_and_predict_on_a_registered_backbone(tiny_backbone, name, tmp_path):
    config = TrainConfig(method=name, backbone="tiny", image_size=32, batch_per_site=4, lr=1e-2)
    method = create_method(name, 2, config)
    assert not any(isinstance(m, COVIDNet) for m in method.modules())
    batches = site_minibatches(size=32)
    before = [p.detach().clone() for p in method.parameters()]
    assert torch.isfinite(method.update(batches)["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, method.parameters()))

    save_checkpoint(tmp_path / "tiny.pt", method, config, ["a", "b"])
    again = load_trained(tmp_path / "tiny.pt", expect_method=name)
    method.eval()
    images = (torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8).numpy()
    for site in (0, 1):
        x = batches[site][0]
        assert torch.allclose(again.method.predict(x, site), method.predict(x, site))
        with torch.no_grad():  # the folded, channels_last copy (evaluate, predict, validation) agrees
            expected = torch.softmax(method.predict(to_tensor(images), site), 1)[:, 1].numpy()
        assert np.allclose(predict_proba(again.method, images, site), expected, atol=1e-5)
