"""Federated rows of a sweep on the shipped sample: a federation per job, on the centralised row's folds and budget."""

import json
import math

from crosssite.config import TrainConfig
from crosssite.federated.job import COMMUNICATION, matched_settings
from crosssite.federated.site import build_method
from crosssite.federated.state import shared_state
from crosssite.io import read_jsonl
from crosssite.paper import select_rows
from crosssite.run_folder import read_predictions, read_split_paths
from crosssite.sweep import read_results, read_sweep_settings, run_sweep

SITES = {"sars-cov-2-ct", "covid-ct"}


def test_federated_rows_run_a_federation_per_job_on_the_centralised_folds_and_budget(fed_and_central_sweeps):
    fed_sweep, central_sweep = fed_and_central_sweeps
    base = TrainConfig(**read_sweep_settings(fed_sweep / "sweep.yaml")["config"])
    central = {r["fold"]: r for r in read_results(central_sweep / "results.jsonl")}
    for fed in read_results(fed_sweep / "results.jsonl"):
        assert (fed["row"], fed["trainer"], central[fed["fold"]]["trainer"]) == ("fedbn", "federate", "train")
        folder = fed_sweep / fed["folder"]
        # each site holds out the same images in train, val and test as the centralised job of its fold and seed
        central_split = read_split_paths(central_sweep / central[fed["fold"]]["folder"])
        for site in SITES:
            assert read_split_paths(folder / site)[site] == central_split[site]
        # and sees as many training images: ceil(N_max / batch) steps per round, one round per centralised epoch
        config = base.replace(method="sepnorm", fold=fed["fold"], seed=fed["seed"])
        steps = math.ceil(max(len(parts["train"]) for parts in central_split.values()) / base.batch_per_site)
        assert matched_settings(config).steps_per_round == steps
        thirds = matched_settings(config, rounds_per_epoch=3)  # a third of the steps in three times the rounds
        assert (thirds.rounds, thirds.steps_per_round) == (3 * base.epochs, math.ceil(steps / 3))
        for site in SITES:
            assert [r["steps"] for r in read_jsonl(folder / site / "train_log.jsonl")] == [steps] * base.epochs
        # the record holds what the report pairs: per-site test metrics and tail AUCs, and the joined predictions
        assert set(fed["sites"]) == SITES and set(fed["tail_auc"]) == SITES
        assert json.loads((folder / "metrics.json").read_text())["sites"] == fed["sites"]
        predicted = read_predictions(folder / "predictions.csv")
        assert len(predicted) == sum(m["n"] for m in fed["sites"].values())
        assert {r["site"] for r in read_predictions(folder / "tail_predictions.csv")} == SITES
        # communication: per round the shared state down and up to train, down to validate; nothing else
        shared = sum(t.numel() * t.element_size() for t in shared_state(build_method(config)).values())
        assert fed["communication"] == {s: {"down": 2 * base.epochs * shared, "up": base.epochs * shared} for s in SITES}
        assert len(read_jsonl(folder / COMMUNICATION)) == 2 * base.epochs * len(SITES)
        assert not list(folder.glob("**/last.pt"))  # resume state dropped once the job is recorded
    assert run_sweep(base, select_rows(["fedbn"]), seeds=1, out=fed_sweep, progress=False) == []

