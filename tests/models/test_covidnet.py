import pytest
import torch
import torch.nn.functional as F

from crosssite.models import MODELS, COVIDNet, create_model


def n_params(m):
    return sum(p.numel() for p in m.parameters())


# --- parameter counts from layer formulas, independent of the module code ---
def conv(cin, cout, k=1, groups=1):
    return (cin // groups) * cout * k * k + cout


def linear(fin, fout):
    return fin * fout + fout


def pepx(cin, cout):
    a, b = cin // 2, 3 * cin // 4
    return conv(cin, a) + conv(a, b) + conv(b, b, 3, groups=b) + conv(b, a) + conv(a, cout)


def backbone_count():
    total = conv(3, 64, 7)
    cin = 64
    for c, n in zip((256, 512, 1024, 2048), (3, 4, 6, 3)):
        total += conv(cin, c)  # upper branch 1x1
        total += pepx(cin, c) + (n - 1) * pepx(c, c)
        cin = c
    return total


ORIGINAL_EXPECTED = backbone_count() + linear(7 * 7 * 2048, 1024) + linear(1024, 256) + linear(256, 2)
BN2D = 2 * (64 + 256 + 512 + 1024 + 2048)
REDESIGN_EXPECTED = (
    backbone_count()
    + BN2D
    + linear(8192, 1024) + 2 * 1024 + linear(1024, 256) + 2 * 256 + linear(256, 2)
    + linear(8192, 1024) + 2 * 1024 + linear(1024, 128) + 2 * 128
)


@pytest.fixture(scope="module")
def original():
    torch.manual_seed(0)
    return create_model("covidnet").eval()


@pytest.fixture(scope="module")
def redesign():
    torch.manual_seed(0)
    return create_model("covidnet-redesign").eval()


def test_registry():
    assert set(MODELS) == {"covidnet", "covidnet-redesign"}
    with pytest.raises(ValueError, match="covidnet-redesign"):
        create_model("resnet50")
    m = create_model("covidnet-redesign", width=0.25, image_size=64)
    assert isinstance(m, COVIDNet) and m.redesign and m.has_projection
    with pytest.raises(TypeError):
        create_model("covidnet", redesign=True)


def test_original_full_size(original):
    count = n_params(original)
    print(f"covidnet params: {count:,}")
    assert count == ORIGINAL_EXPECTED
    assert not original.has_projection
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in original.modules())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        emb = original.features(x)
        assert emb.shape == (2, 7 * 7 * 2048)
        logits = original(x)
    assert logits.shape == (2, 2)
    assert torch.allclose(logits, original.classify(emb), atol=1e-5)
    with pytest.raises(RuntimeError):
        original.project(emb)
    with pytest.raises(ValueError, match="224"):
        original(torch.randn(1, 3, 256, 256))


def test_redesign_full_size(redesign):
    count = n_params(redesign)
    print(f"covidnet-redesign params (incl. projection head): {count:,}")
    assert count == REDESIGN_EXPECTED
    assert abs(count - 48.7e6) / 48.7e6 < 0.03
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        emb = redesign.features(x)
        assert emb.shape == (2, 8192)
        assert redesign(x).shape == (2, 2)
        z = redesign.project(emb)
    assert z.shape == (2, 128)
    assert (z >= 0).all()  # BN + ReLU at the end of the projection head


def test_last_stage_hook_gives_last_feature_map(redesign):
    captured = {}
    h = redesign.last_stage.register_forward_hook(lambda m, i, o: captured.setdefault("map", o))
    try:
        x = torch.randn(2, 3, 224, 224)
        with torch.no_grad():
            emb = redesign.features(x)
    finally:
        h.remove()
    fmap = captured["map"]
    assert fmap.shape == (2, 2048, 7, 7)
    assert torch.allclose(torch.flatten(F.adaptive_avg_pool2d(fmap, 2), 1), emb, atol=1e-5)
    assert redesign.last_stage is redesign.stages[-1]


@pytest.mark.parametrize("redesign_flag", [False, True])
def test_small_width_forward_and_backward(redesign_flag):
    torch.manual_seed(0)
    m = COVIDNet(redesign=redesign_flag, width=0.25, image_size=64)
    m.train()
    x = torch.randn(3, 3, 64, 64)
    emb = m.features(x)
    assert emb.shape == (3, 512 * 2 * 2)
    logits = m.classify(emb)
    assert logits.shape == (3, 2)
    loss = logits.sum() + (m.project(emb).sum() if redesign_flag else 0)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_tiny_width_keeps_channels_valid():
    m = COVIDNet(redesign=True, width=0.01, image_size=32)
    with torch.no_grad():
        m.eval()
        assert m(torch.randn(2, 3, 32, 32)).shape == (2, 2)


@pytest.mark.parametrize("bad", [100, 0, 230, -32])
def test_image_size_not_multiple_of_16_raises(bad):
    with pytest.raises(ValueError, match=str(bad)):
        COVIDNet(redesign=False, image_size=bad)


@pytest.mark.parametrize("redesign", [False, True])
def test_112_px_works_for_both_backbones(redesign):
    m = COVIDNet(redesign=redesign, width=0.125, image_size=112).eval()
    with torch.no_grad():
        assert m(torch.randn(2, 3, 112, 112)).shape == (2, 2)
        assert m.feature_map(torch.randn(1, 3, 112, 112)).shape[-2:] == (3, 3)


def test_redesign_accepts_other_sizes_num_classes():
    m = COVIDNet(redesign=True, width=0.25, image_size=96, num_classes=3).eval()
    with torch.no_grad():
        assert m(torch.randn(2, 3, 96, 96)).shape == (2, 3)
        assert m(torch.randn(2, 3, 128, 128)).shape == (2, 3)  # 2x2 pooling: any multiple of 16
    o = COVIDNet(redesign=False, width=0.25, image_size=96).eval()
    assert o.features(torch.randn(1, 3, 96, 96)).shape == (1, 512 * 3 * 3)


def test_stage_dense_sums_match_manual_recomputation():
    """Each block reads upper + all earlier block outputs; next stage reads maxpool(previous sum)."""
    torch.manual_seed(0)
    m = COVIDNet(redesign=False, width=0.125, image_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        h = m.stem(x)
        for i, stage in enumerate(m.stages):
            upper = stage.upper[0](h)
            inp = h
            if i > 0:
                upper = F.max_pool2d(upper, 2)
                inp = F.max_pool2d(h, 2)
            outs = [stage.blocks[0](inp)]
            for block in stage.blocks[1:]:
                outs.append(block(upper + sum(outs)))
            h_manual = upper + sum(outs)
            h_stage = stage(h)
            assert torch.allclose(h_stage, h_manual, atol=1e-5)
            # every block output counts exactly once (no pepx32-twice defect)
            assert len(outs) == (3, 4, 6, 3)[i]
            h = h_stage
        assert torch.allclose(torch.flatten(h, 1), m.features(x), atol=1e-5)


def test_pepx_relu_option():
    torch.manual_seed(0)
    plain = COVIDNet(redesign=False, width=0.125, image_size=32)
    torch.manual_seed(0)
    relu = COVIDNet(redesign=False, width=0.125, image_size=32, pepx_relu=True)
    relu.load_state_dict(plain.state_dict())  # ReLUs add no parameters; key names must still match
    blocks = lambda m: [b for s in m.stages for b in s.blocks]
    assert not any(b.relu for b in blocks(plain))
    assert len(blocks(relu)) == 16 and all(b.relu for b in blocks(relu))
    # with pepx_relu every PEPX output is the last 1x1 conv of a non-negative input
    b = blocks(relu)[0]
    captured = []
    h = b.network[4].register_forward_hook(lambda m, i, o: captured.append(i[0]))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(plain(x), relu(x))
    h.remove()
    assert captured and (captured[0] >= 0).all()


def test_projection_flag():
    full = COVIDNet(redesign=True, width=0.125, image_size=32)
    assert full.has_projection
    bare = create_model("covidnet-redesign", width=0.125, image_size=32, projection=False)
    assert not bare.has_projection
    proj_params = linear(4 * 256, 1024) + 2 * 1024 + linear(1024, 128) + 2 * 128
    assert n_params(full) - n_params(bare) == proj_params
    with pytest.raises(RuntimeError):
        bare.eval().project(torch.zeros(1, 1024))
    with pytest.raises(ValueError, match="projection"):
        create_model("covidnet", width=0.125, image_size=32, projection=True)
    assert not create_model("covidnet", width=0.125, image_size=32, projection=False).has_projection


def test_projection_head_ends_in_bn_relu_or_in_the_linear_layer():
    x = torch.randn(4, 3, 64, 64)
    for end, non_negative in (("bn-relu", True), ("linear", False)):
        net = create_model("covidnet-redesign", width=0.125, image_size=64, projection=True, projection_head=end)
        z = net.project(net.features(x))
        assert z.shape == (4, 128) and bool((z >= 0).all()) == non_negative
    with pytest.raises(ValueError, match="projection_head"):
        create_model("covidnet-redesign", width=0.125, image_size=64, projection=True, projection_head="mlp")
