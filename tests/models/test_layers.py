"""The memory- and speed-minded layers compute exactly what the torch layers they replace compute."""

import pytest
import torch
import torch.nn.functional as F

from crosssite.models import layers
from crosssite.models import MODELS, create_model
from crosssite.models.layers import PointwiseConv, as_torch_layers, max_pool_2x2, relu_max_pool_2x2

SHAPES = [(2, 3, 8, 8), (2, 5, 7, 7), (3, 4, 6, 9), (1, 2, 3, 3)]  # odd sides: the last row/column is dropped


def _inputs(shape, channels_last, ties):
    g = torch.Generator().manual_seed(0)
    # small integers make ties inside windows and all-negative windows common
    x = torch.randint(-2, 3, shape, generator=g).float() if ties else torch.randn(shape, generator=g)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_pooling_matches_torch_values_and_gradients(shape, channels_last, ties, relu):
    x = _inputs(shape, channels_last, ties)
    ours, ref = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    expected = F.max_pool2d(F.relu(ref) if relu else ref, 2)
    got = (relu_max_pool_2x2 if relu else max_pool_2x2)(ours)
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1))
    expected.backward(grad)
    got.backward(grad)
    assert torch.equal(got, expected)
    assert torch.equal(ours.grad, ref.grad)
    if channels_last and shape[-1] > 3:
        assert ours.grad.is_contiguous(memory_format=torch.channels_last)


def test_pooling_keeps_less_for_backward_than_relu_then_max_pool():
    x = torch.randn(4, 8, 32, 32, requires_grad=True)

    def saved_bytes(fn):
        sizes = {}

        def pack(t):
            sizes[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(x * 1)  # a fresh tensor: the graph must keep what the pooling needs, not x itself
        return sum(sizes.values())

    torch_bytes = saved_bytes(lambda h: F.max_pool2d(F.relu(h), 2))
    ours = saved_bytes(relu_max_pool_2x2)
    assert ours * 8 <= torch_bytes  # 3 bytes per output value against 4 per input + 8 per output


@pytest.mark.parametrize("side", [3, 7, 14, 28])
@pytest.mark.parametrize("channels_last", [False, True])
def test_pointwise_conv_matches_conv2d(side, channels_last):
    torch.manual_seed(0)
    conv = PointwiseConv(6, 5)
    x = torch.randn(3, 6, side, side)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ours, ref = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    got = conv(ours)
    expected = F.conv2d(ref, conv.weight, conv.bias)
    grad = torch.randn(expected.shape)
    got.backward(grad)
    w_grad = conv.weight.grad.clone()
    conv.weight.grad = None
    expected.backward(grad)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(ours.grad, ref.grad)
    torch.testing.assert_close(w_grad, conv.weight.grad)
    if channels_last:
        assert got.is_contiguous(memory_format=torch.channels_last)


def test_pointwise_conv_takes_the_matrix_product_only_on_small_channels_last_maps(monkeypatch):
    calls = []
    real = F.linear
    monkeypatch.setattr(layers.F, "linear", lambda *a: calls.append(1) or real(*a))
    conv = PointwiseConv(4, 4)
    small = layers.MATMUL_MAX_PIXELS
    conv(torch.randn(1, 4, 7, 7))  # NCHW: the convolution
    conv(torch.randn(1, 4, 28, 28).contiguous(memory_format=torch.channels_last))  # too large
    assert 7 * 7 <= small < 28 * 28 and not calls
    conv(torch.randn(1, 4, 7, 7).contiguous(memory_format=torch.channels_last))
    assert calls
    assert list(conv.state_dict()) == list(torch.nn.Conv2d(4, 4, 1).state_dict())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_as_torch_layers_computes_the_same_with_torch_layers_only(name):
    torch.manual_seed(0)
    net = create_model(name, width=0.125, image_size=64).train()
    x = torch.randn(4, 3, 64, 64)
    params = dict(net.named_parameters())
    expected = net(x)
    plain = as_torch_layers(net)
    assert not [m for m in plain.modules() if type(m).__module__ == layers.__name__]
    assert {n: p for n, p in plain.named_parameters()} == params  # the very same parameter objects
    torch.testing.assert_close(plain(x), expected)
