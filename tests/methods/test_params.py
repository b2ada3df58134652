"""Parameter counts (measured by use) against counts from the layer formulas."""

import pytest

from crosssite.cli import main
from crosssite.config import TrainConfig
from crosssite.methods import METHODS
from crosssite.methods.params import count_parameters, format_table
from crosssite.models.covidnet import HIDDEN_1, HIDDEN_2, REDESIGN_POOL, STAGE_BLOCKS, STAGE_CHANNELS, STEM_CHANNELS

WIDTH, SIZE = 0.25, 64
CONFIG = TrainConfig(width=WIDTH, image_size=SIZE)


def scaled(c):
    return max(1, round(c * WIDTH))


def depthwise_channels():
    """The channel count of every PEPX block's depthwise conv: int(3 C_in / 4)."""
    channels, c_in = [], scaled(STEM_CHANNELS)
    for base, n in zip(STAGE_CHANNELS, STAGE_BLOCKS):
        c_out = scaled(base)
        channels += [(3 * c_in) // 4] + [(3 * c_out) // 4] * (n - 1)
        c_in = c_out
    return channels


LAST_LAYER = HIDDEN_2 * 2 + 2
EMBEDDING = scaled(STAGE_CHANNELS[-1]) * REDESIGN_POOL**2
# Linear -> BN1d -> ReLU -> Linear -> BN1d -> ReLU -> Linear (weights, biases, BN weight and bias)
DENSE_HEAD = (EMBEDDING + 1) * HIDDEN_1 + 2 * HIDDEN_1 + (HIDDEN_1 + 1) * HIDDEN_2 + 2 * HIDDEN_2 + LAST_LAYER


@pytest.fixture(scope="module")
def counts():
    return {name: count_parameters(name, CONFIG) for name in METHODS}


def test_totals_split_into_shared_and_per_site(counts):
    for c in counts.values():
        assert c.unused == 0
        assert c.total == c.shared + sum(c.per_site)
        assert c.per_site[0] == c.per_site[1]


def test_baselines(counts):
    joint, single = counts["joint"], counts["single"]
    assert joint.per_site == [0, 0] and joint.shared == joint.total
    assert single.shared == 0 and single.per_site == [joint.total, joint.total]
    # sepnorm: the same network, plus one more copy of every BN's weight and bias
    sepnorm = counts["sepnorm"]
    assert sepnorm.total - joint.total == sepnorm.per_site[0]
    assert 0 < sepnorm.per_site[0] < 0.01 * joint.total


def test_adapters_cost_a_full_1x1_conv_per_block_per_site(counts):
    sepnorm = counts["sepnorm"]
    dw = depthwise_channels()
    assert len(dw) == sum(STAGE_BLOCKS)
    parallel = sum(e * e for e in dw)  # 1x1 conv e -> e, no bias
    series = parallel + sum(2 * e for e in dw)  # plus the adapter's own BN (weight, bias)
    for name, adapters in (("parallel-adapter", parallel), ("series-adapter", series)):
        c = counts[name]
        assert c.per_site[0] == sepnorm.per_site[0] + adapters + LAST_LAYER
        assert c.shared == sepnorm.shared - LAST_LAYER  # the last linear layer left the shared part


def test_ms_net_adds_one_dense_head_per_site(counts):
    sepnorm, ms = counts["sepnorm"], counts["ms-net"]
    assert ms.shared == sepnorm.shared
    assert ms.per_site[0] == sepnorm.per_site[0] + DENSE_HEAD


def test_table_and_command(counts, capsys):
    table = format_table({"joint": counts["joint"], "single": counts["single"]})
    assert table.splitlines()[0] == "| method | total | shared | site 0 only | site 1 only | site-specific share |"
    assert table.splitlines()[-1].endswith("| 100.0% |")
    assert main(["params", "--method", "ms-net", "--width", str(WIDTH), "--image-size", str(SIZE)]) == 0
    out = capsys.readouterr().out
    assert f"| ms-net | {counts['ms-net'].total:,} |" in out


def test_command_rejects_bad_settings(capsys):
    assert main(["params", "--method", "nope", "--width", "0.125", "--image-size", "32"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(["params", "--image-size", "100"]) == 2
