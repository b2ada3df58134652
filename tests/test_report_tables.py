"""The report's pure computations: paired differences that do not depend on how folds are numbered, and
one patient bootstrap shared by all jobs."""

import math
from types import SimpleNamespace

import numpy as np
import pytest

from crosssite.report.results import SiteScores
from crosssite.report.tables import auc_replicates, paired_differences


def test_relabelling_the_folds_within_a_repetition_changes_no_interval():
    rng = np.random.default_rng(0)
    keys = [(fold, seed) for seed in range(3) for fold in range(10)]
    a = {k: 93 + rng.normal(0, 1.5) for k in keys}
    b = {k: a[k] + rng.normal(-0.5, 1.2) for k in keys}
    first = paired_differences(a, b, 5 / 36)
    for _ in range(50):  # a repetition's folds are unordered: any renumbering, the same for both rows
        relabel = {seed: rng.permutation(10) for seed in range(3)}
        moved = [{(int(relabel[s][f]), s): v for (f, s), v in values.items()} for values in (a, b)]
        again = paired_differences(*moved, 5 / 36)
        assert again.keys() == first.keys()
        for key, value in first.items():
            assert again[key] == pytest.approx(value, rel=1e-12, nan_ok=True), key
    assert first["n_pairs"] == 30 and first["repetitions"] == 3 and first["df"] == 29


def test_unpaired_and_nan_jobs_are_left_out():
    a = {(0, 0): 90.0, (1, 0): 91.0, (2, 0): 92.0, (3, 0): math.nan}
    b = {(0, 0): 89.0, (1, 0): 89.5, (3, 0): 88.0}
    result = paired_differences(a, b, 0.0)
    assert result["n_pairs"] == 2 and result["mean_diff"] == pytest.approx(1.25)


def test_one_patient_draw_is_shared_by_every_job_of_a_row():
    """Two repetitions test the same images in other orders: with one draw per site shared by all jobs, the
    same scores give the same replicates, and a patient's images are drawn together."""
    res = SimpleNamespace(sites=["covid-ct"])
    labels = np.array([0, 1, 0, 1, 0, 1])
    units = [f"patient:{p}" for p in ("a", "a", "b", "b", "c", "c")]
    scores = np.array([0.2, 0.7, 0.4, 0.6, 0.5, 0.3])
    order = [3, 0, 5, 1, 4, 2]

    def job(index):
        return {"covid-ct": SiteScores(labels[index], [units[i] for i in index], scores[index], [],
                                       {"best_val": 0.0})}

    reps = auc_replicates(res, {"seed0": job(list(range(6))), "seed1": job(order)}, replicates=200)
    first, second = reps["seed0"]["covid-ct", "best_val"][1], reps["seed1"]["covid-ct", "best_val"][1]
    np.testing.assert_array_equal(first, second)
    assert len(set(np.round(first[~np.isnan(first)], 6))) > 1  # the replicates vary
