"""Federated rows of a sweep on the shipped sample: a federation per job, paired with the centralised row's folds."""

import json
import math

from conftest import TINY_SETTINGS

from crosssite.config import TrainConfig
from crosssite.federated.job import COMMUNICATION, matched_settings
from crosssite.federated.site import build_method
from crosssite.federated.state import shared_state
from crosssite.io import read_jsonl
from crosssite.paper import ROW_BY_NAME, select_rows
from crosssite.run_folder import read_predictions, read_split_paths
from crosssite.sweep import run_sweep

TINY = {**TINY_SETTINGS, "epochs": 2, "folds": 2}
SITES = {"sars-cov-2-ct", "covid-ct"}


def test_federated_rows_run_a_federation_per_job_on_the_centralised_folds_and_budget(tmp_path):
    rows = [ROW_BY_NAME["sepnorm"], ROW_BY_NAME["fedbn"]]
    base = TrainConfig(**TINY)
    records = run_sweep(base, rows, seeds=1, out=tmp_path, progress=False)
    assert [r["status"] for r in records] == ["ok"] * 4, [r.get("error") for r in records]
    by_job = {r["job"]: r for r in records}
    for fold in (0, 1):
        fed, central = by_job[f"fedbn-fold{fold}-seed0"], by_job[f"sepnorm-fold{fold}-seed0"]
        assert (fed["trainer"], central["trainer"]) == ("federate", "train")
        folder = tmp_path / fed["folder"]
        # the same images in train, val and test at each site as the centralised job of this fold and seed
        central_split = read_split_paths(tmp_path / central["folder"])
        for site in SITES:
            assert read_split_paths(folder / site)[site] == central_split[site]
        # each site sees as many training images as centralised: ceil(N_max / batch) steps a round, one round an epoch
        config = base.replace(method="sepnorm", fold=fold, seed=0)
        largest = max(len(parts["train"]) for parts in central_split.values())
        steps = math.ceil(largest / base.batch_per_site)
        assert matched_settings(config).steps_per_round == steps
        for site in SITES:
            log = read_jsonl(folder / site / "train_log.jsonl")
            assert [r["steps"] for r in log] == [steps] * base.epochs
        # the record holds what the report pairs: per-site test metrics, tail AUCs and the joined predictions
        assert set(fed["sites"]) == SITES and set(fed["tail_auc"]) == SITES
        assert json.loads((folder / "metrics.json").read_text())["sites"] == fed["sites"]
        predicted = read_predictions(folder / "predictions.csv")
        assert {r["site"] for r in predicted} == SITES
        assert len(predicted) == sum(m["n"] for m in fed["sites"].values())
        assert {int(r["epoch"]) for r in read_predictions(folder / "tail_predictions.csv")} == {1, 2}
        # communication: per round, the shared state down and up for fit and down for validation, nothing else
        shared = sum(t.numel() * t.element_size() for t in shared_state(build_method(config)).values())
        assert fed["communication"] == {s: {"down": 2 * base.epochs * shared, "up": base.epochs * shared} for s in SITES}
        assert len(read_jsonl(folder / COMMUNICATION)) == 2 * base.epochs * len(SITES)
        assert not list(folder.glob("**/last.pt"))  # resume state dropped once the job is recorded
    assert run_sweep(base, rows, seeds=1, out=tmp_path, progress=False) == []


def test_federated_rows_are_a_group_of_their_own_and_not_in_all():
    assert [r.name for r in select_rows(["federated"])] == ["fedavg", "fedbn", "fed-contrastive"]
    assert not any(r.trainer == "federate" for r in select_rows(["all"]))
