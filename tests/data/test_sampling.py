import numpy as np

from crosssite.data.sampling import epoch_batches, eval_batches


def test_epoch_batches_cover_and_cycle():
    sizes = [100, 23]
    batches = epoch_batches(sizes, 8, np.random.default_rng(0))
    assert len(batches) == 13
    assert all(len(step) == 2 and all(len(b) == 8 for b in step) for step in batches)
    for k, n in enumerate(sizes):
        seen = np.concatenate([step[k] for step in batches])
        assert set(seen.tolist()) == set(range(n))
    small = np.concatenate([step[1] for step in batches])
    assert np.bincount(small).min() >= 4  # 104 draws of 23 images: each seen at least 4x


def test_epoch_batches_deterministic():
    a = epoch_batches([10, 7], 3, np.random.default_rng(5))
    b = epoch_batches([10, 7], 3, np.random.default_rng(5))
    assert all(np.array_equal(x, y) for sa, sb in zip(a, b) for x, y in zip(sa, sb))


def test_eval_batches():
    out = eval_batches(10, 4)
    assert [b.tolist() for b in out] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert eval_batches(0, 4) == []
