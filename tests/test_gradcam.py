"""Grad-CAM: map size and values, class dependence, every method's network hook, the command."""

import numpy as np
import pytest
import torch
from PIL import Image

from crosssite import cli
from crosssite.checkpoint import save_checkpoint
from crosssite.config import TrainConfig
from crosssite.data.images import DecodedCache, load_grayscale
from crosssite.data.sites import SAMPLE_DATA
from crosssite.data.transforms import to_tensor
from crosssite.saliency import explain, grad_cam, upsample
from crosssite.methods import METHODS, create_method

CONFIG = TrainConfig(image_size=64, width=0.125)  # 64 px: a 2x2 last-stage map (32 px would give 1x1)
IMAGES = sorted((SAMPLE_DATA / "covid-ct" / "CT_COVID").iterdir())[:2] + sorted(
    (SAMPLE_DATA / "sars-cov-2-ct" / "non-COVID").iterdir()
)[:1]


def trained_a_little():
    """The contrastive method after a few real steps on sample images (real batch-norm statistics)."""
    torch.manual_seed(0)
    method = create_method("contrastive", 2, CONFIG)
    cache = DecodedCache(CONFIG.image_size, CONFIG.window)
    x = to_tensor(cache.eval_batch(IMAGES + IMAGES[:1]))
    y = torch.tensor([1, 1, 0, 1])
    method.train()
    for _ in range(3):
        method.update([(x, y), (x.flip(-1), y)])
    return method.eval()


def test_map_has_the_image_size_is_finite_and_depends_on_the_class():
    method = trained_a_little()
    covid = explain(method, CONFIG, 1, IMAGES, target=1)
    other = explain(method, CONFIG, 1, IMAGES, target=0)
    for path, a, b in zip(IMAGES, covid, other):
        assert a["cam"].shape == load_grayscale(path).shape == a["image"].shape
        assert np.isfinite(a["cam"]).all() and a["cam"].min() >= 0 and a["cam"].max() <= 1
        assert a["p_covid"] == pytest.approx(b["p_covid"])
    assert any(not np.allclose(a["cam"], b["cam"]) for a, b in zip(covid, other))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_gives_gradcam_the_network_that_predicts_for_the_site(name):
    backbone = METHODS[name].supported_backbones()[0]
    method = create_method(name, 2, CONFIG.replace(backbone=backbone)).eval()
    x = torch.randn(3, 3, 64, 64)
    for site in (0, 1):
        cam, logits = grad_cam(method, site, x)
        with torch.no_grad():
            assert torch.allclose(logits, method.predict(x, site), atol=1e-5)
        assert cam.shape == (3, 2, 2) and torch.isfinite(cam).all()
    assert all(p.grad is None for p in method.parameters())  # Grad-CAM leaves no gradients behind


def test_summation_noise_does_not_change_the_drawn_map():
    cam = torch.tensor([[0.22664689976341448, 0.6044468526156941], [0.18706186455750706, 0.0]], dtype=torch.float64)
    noisy = torch.nextafter(cam, torch.full_like(cam, 2.0))  # one ulp up, as another thread count may give
    drawn = upsample(cam, (97, 131))
    assert np.array_equal(drawn, upsample(noisy, (97, 131)))
    assert drawn.max() == 1.0 and drawn.min() == 0.0


def test_gradcam_command_writes_one_png_per_image(tmp_path, capsys):
    method = trained_a_little()
    checkpoint = tmp_path / "best.pt"
    save_checkpoint(checkpoint, method, CONFIG, ["sars-cov-2-ct", "covid-ct"], epoch=1, val_mean_auc=0.5)
    out = tmp_path / "cams"
    argv = ["gradcam", str(checkpoint), "--site", "covid-ct", *map(str, IMAGES), "--out", str(out)]
    assert cli.main(argv) == 0
    pngs = sorted(out.glob("*.png"))
    assert [p.stem for p in pngs] == sorted(p.stem for p in IMAGES)
    assert all(Image.open(p).size[0] > 100 for p in pngs)
    assert capsys.readouterr().out.count(".png") == len(IMAGES)
    assert cli.main(["gradcam", str(checkpoint), "--site", "nowhere", str(IMAGES[0]), "--out", str(out)]) == 2
