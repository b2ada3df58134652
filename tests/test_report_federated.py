"""`crosssite report FED --against CENTRAL`: federated rows paired with their centralised rows across two sweeps."""

import csv

import pytest

from crosssite import cli
from crosssite.errors import CrossSiteError
from crosssite.report import load_results
from crosssite.report.federated_section import MIB, check_pairable, federated_section
from crosssite.report.results import tail_auc
from crosssite.report.tables import design_ratio
from crosssite.stats import repeated_cv_difference


def test_report_against_pairs_each_federated_job_with_the_centralised_job_of_its_fold_and_seed(fed_and_central_sweeps):
    fed, central = fed_and_central_sweeps
    assert cli.main(["report", str(fed), "--against", str(central), "--examples", "0"]) == 0
    text = (fed / "report.md").read_text()
    assert "## Federated vs centralised" in text and "FedBN (SepNorm, federated) vs SepNorm" in text
    rows = list(csv.DictReader(open(fed / "tables" / "federated.csv")))
    res_fed, res_central = load_results(fed), load_results(central)
    assert {(r["site"], r["epoch"]) for r in rows} == {(s, c) for s in res_fed.sites for c in ("best_val", "last_k")}
    for r in rows:
        value = {"best_val": lambda j: j["sites"][r["site"]]["auc"], "last_k": lambda j: tail_auc(j, r["site"])}[r["epoch"]]
        by_fold = [{j["fold"]: 100 * value(j) for j in res.ok(row)} for res, row in ((res_fed, "fedbn"), (res_central, "sepnorm"))]
        expected = repeated_cv_difference([by_fold[0][f] - by_fold[1][f] for f in (0, 1)], design_ratio(res_fed))
        assert int(r["n_pairs"]) == 2
        assert float(r["mean_diff"]) == pytest.approx(expected["mean_diff"])
        assert float(r["ci_low"]) == pytest.approx(expected["ci_low"])
        assert float(r["federated_mean"]) - float(r["centralised_mean"]) == pytest.approx(expected["mean_diff"])
    # each site fitted its calibration on its own validation part: the report applies them to the job's test rows
    calibrated = list(csv.DictReader(open(fed / "tables" / "calibration.csv")))
    assert {(r["row"], r["site"]) for r in calibrated if r["level"] == "image"} == {("fedbn", s) for s in res_fed.sites}
    assert all(int(r["jobs"]) == 2 for r in calibrated)
    costs = list(csv.DictReader(open(fed / "tables" / "federated_costs.csv")))
    moved = [j["communication"] for j in res_fed.ok("fedbn")]
    for c in costs:
        assert float(c["mib_up"]) == pytest.approx(sum(m[c["site"]]["up"] for m in moved) / len(moved) / MIB)
        assert int(c["centralised_jobs"]) == 2


def test_report_refuses_to_pair_sweeps_of_other_settings_and_says_how_to_compare(fed_and_central_sweeps, tmp_path):
    fed, central = fed_and_central_sweeps
    res_fed, res_central = load_results(fed), load_results(central)
    res_central.settings["config"]["image_size"] = 64
    with pytest.raises(CrossSiteError, match="image_size"):
        check_pairable(res_fed, res_central)
    assert "--against CENTRALISED_SWEEP" in "\n".join(federated_section(res_fed, None, tmp_path))
