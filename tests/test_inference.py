"""The fast inference copy computes what method.predict computes, for every method and site."""

import numpy as np
import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from crosssite.config import TrainConfig
from crosssite.data.transforms import to_tensor
from crosssite.inference import inference_network, predict_proba
from crosssite.methods import METHODS, create_method
from crosssite.models.site_bn import SiteBatchNorm


def _trained_a_little(name: str, backbone: str = "covidnet-redesign"):
    """A method whose batch-norm statistics and affine weights differ per site (not the identity)."""
    torch.manual_seed(0)
    config = TrainConfig(method=name, backbone=backbone, image_size=32, width=0.0625, lr=1e-2)
    method = create_method(name, 2, config)
    method.train()
    for step in range(3):
        batches = [(torch.randn(4, 3, 32, 32) * (1 + site) + site, torch.tensor([0, 1, 0, 1])) for site in range(2)]
        method.update(batches)
    return method.eval()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_folded_network_matches_predict(name):
    method = _trained_a_little(name)
    x = torch.randn(5, 3, 32, 32)
    for site in range(2):
        with torch.no_grad():
            torch.testing.assert_close(inference_network(method, site)(x), method.predict(x, site), atol=1e-4, rtol=1e-4)


def test_paper_network_has_no_batch_norm_left():
    method = _trained_a_little("contrastive")
    fast = inference_network(method, 1)
    assert not [m for m in fast.modules() if isinstance(m, (SiteBatchNorm, _BatchNorm))]
    assert fast.net.stem[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_sites_differ_after_folding():
    """Each site's copy folds its own statistics: the two sites' outputs are not the same."""
    method = _trained_a_little("contrastive")
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(inference_network(method, 0)(x), inference_network(method, 1)(x), atol=1e-3)


def test_original_covidnet_matches_predict():
    method = _trained_a_little("joint", backbone="covidnet")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(inference_network(method, 0)(x), method.predict(x, 0), atol=1e-4, rtol=1e-4)


def test_predict_proba_batches_agree_with_predict():
    method = _trained_a_little("contrastive")
    images = np.random.default_rng(0).integers(0, 256, (7, 32, 32), dtype=np.uint8)
    with torch.no_grad():
        expected = torch.softmax(method.predict(to_tensor(images), 1), dim=1)[:, 1].numpy()
    np.testing.assert_allclose(predict_proba(method, images, 1, batch_size=3), expected, atol=1e-5)
    assert predict_proba(method, images[:0], 1).shape == (0,)


def test_original_model_untouched():
    method = _trained_a_little("sepnorm")
    before = {k: v.clone() for k, v in method.state_dict().items()}
    inference_network(method, 0)
    after = method.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, SiteBatchNorm) for m in method.modules())
