"""The experiment design refers only to rows, methods, backbones, settings and metrics that exist."""

import dataclasses

from crosssite.cli import build_parser
from crosssite.config import TrainConfig
from crosssite.methods import METHODS
from crosssite.metrics import METRIC_NAMES
from crosssite.paper import (
    COMPARED_METRIC, COMPARISONS, FEDERATED_PAIRS, FIG3_PANELS, OURS, ROW_BY_NAME, ROW_GROUPS, ROWS, TABLE1_METRICS,
    planned_names, select_rows,
)
from crosssite.sweep import TRAINERS


def test_design_names_only_known_things():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert len(ROW_BY_NAME) == len(ROWS)  # row names are unique
    for row in ROWS:
        assert row.method in METHODS and row.backbone in METHODS[row.method].supported_backbones()
        assert {k for k, _ in row.settings} <= fields
    assert set(TABLE1_METRICS) <= set(METRIC_NAMES) and COMPARED_METRIC in METRIC_NAMES
    named = [OURS] + [n for _, _, pairs, _ in COMPARISONS for pair in pairs for n in pair]
    named += [n for _, rows in FIG3_PANELS for n in rows]
    assert set(named) <= set(ROW_BY_NAME)
    assert set(ROW_GROUPS["all"]) | set(ROW_GROUPS["federated"]) == set(ROWS)
    assert all(row.trainer in TRAINERS for row in ROWS)


def test_federated_rows_are_a_group_of_their_own_and_not_in_all():
    assert [r.name for r in select_rows(["federated"])][:3] == ["fedavg", "fedbn", "fed-contrastive"]
    assert set(FEDERATED_PAIRS) == {r.name for r in select_rows(["federated"])}
    assert not any(r.trainer == "federate" for r in select_rows(["all"]))
    assert all(ROW_BY_NAME[f].method == ROW_BY_NAME[c].method for f, c in FEDERATED_PAIRS.items())


def test_planned_order_runs_the_papers_rows_first():
    rows = [ROW_BY_NAME["contrastive-alpha0.1"], ROW_BY_NAME["sepnorm"], ROW_BY_NAME["contrastive"]]
    cells = planned_names(rows, folds=2, seeds=2, row_seeds={"contrastive": 1})
    assert [(r.name, f, s) for r, f, s in cells] == [
        ("sepnorm", 0, 0), ("sepnorm", 1, 0), ("sepnorm", 0, 1), ("sepnorm", 1, 1),  # table1 rows, all seeds
        ("contrastive-alpha0.1", 0, 0), ("contrastive-alpha0.1", 1, 0),  # then the other rows
        ("contrastive-alpha0.1", 0, 1), ("contrastive-alpha0.1", 1, 1),
        ("contrastive", 0, 0), ("contrastive", 1, 0),  # then the rows run at fewer seeds
    ]


def test_sweep_rows_flag_and_its_methods_alias():
    parser = build_parser()
    common = ["sweep", "--out", "x"]
    assert parser.parse_args([*common, "--rows", "table1", "sepnorm"]).rows == ["table1", "sepnorm"]
    assert parser.parse_args([*common, "--methods", "ablations"]).rows == ["ablations"]
    assert parser.parse_args(common).rows == ["all"]
