"""The experiment design of Wang, Liu & Dou 2020, in one place: the rows a sweep can run, which row is
the paper's method, what Tables I-III and Fig. 3 show, and the order in which jobs run.

`crosssite sweep` plans its jobs from these rows; `crosssite report` lays out its tables and figures
from them. A new row, comparison or panel is one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import CrossSiteError


@dataclass(frozen=True)
class Row:
    """One row of a table: a method on a backbone with settings of its own, and how the report names it."""

    name: str
    display: str
    method: str
    backbone: str = "covidnet-redesign"
    settings: tuple[tuple[str, object], ...] = ()  # TrainConfig fields this row sets over the sweep's
    group: str = "table1"  # table1 (the paper's rows), ablation, grouped (duplicate-grouped folds) or federated
    trainer: str = "train"  # how its jobs train: crosssite.sweep.TRAINERS (train, or federate: one process per job)
    rounds_per_epoch: int = 1  # federate: rounds per centralised epoch, each with that share of the epoch's steps


#: Table I of the paper, in the paper's order
TABLE1_ROWS = [
    Row("single-covidnet", "Single (COVID-Net)", "single", "covidnet"),
    Row("single-redesign", "Single (redesigned)", "single"),
    Row("joint-covidnet", "Joint (COVID-Net)", "joint", "covidnet"),
    Row("joint-redesign", "Joint (redesigned)", "joint"),
    Row("series-adapter", "Series Adapter", "series-adapter"),
    Row("parallel-adapter", "Parallel Adapter", "parallel-adapter"),
    Row("ms-net", "MS-Net", "ms-net"),
    Row("sepnorm", "SepNorm", "sepnorm"),
    Row("contrastive", "Contrastive (ours)", "contrastive"),
]
#: ablations of the paper's method (ours, not the paper's; docs/methods.md)
ABLATION_ROWS = [
    Row("contrastive-alpha0.1", "Contrastive, alpha 0.1", "contrastive", settings=(("alpha", 0.1),), group="ablation"),
    Row("contrastive-linear-head", "Contrastive, linear projection end", "contrastive",
        settings=(("projection_head", "linear"),), group="ablation"),
    Row("contrastive-tau0.2", "Contrastive, tau 0.2", "contrastive", settings=(("temperature", 0.2),), group="ablation"),
]
#: rows re-run on folds that keep near-duplicate images together (Site A has no patient ids)
GROUPED_ROWS = [
    Row(f"{name}-grouped", f"{display}, grouped folds", method, settings=(("group_duplicates", 0.95),), group="grouped")
    for name, display, method in (
        ("joint-redesign", "Joint (redesigned)", "joint"),
        ("sepnorm", "SepNorm", "sepnorm"),
        ("contrastive", "Contrastive (ours)", "contrastive"),
    )
]
#: federated forms of three centralised rows (ours; docs/federated.md): each site trains on its own images,
#: at the centralised row's budget in images per site (crosssite.federated.job)
FEDERATED_ROWS = [
    Row("fedavg", "FedAvg (Joint, federated)", "joint", group="federated", trainer="federate"),
    Row("fedbn", "FedBN (SepNorm, federated)", "sepnorm", group="federated", trainer="federate"),
    Row("fed-contrastive", "Contrastive, federated (ours)", "contrastive", group="federated", trainer="federate"),
    # the same images per site in 3 times as many rounds of a third of the steps: less drift between averagings
    Row("fedavg-3x", "FedAvg, 3 rounds per epoch", "joint", group="federated", trainer="federate", rounds_per_epoch=3),
    Row("fedbn-3x", "FedBN, 3 rounds per epoch", "sepnorm", group="federated", trainer="federate", rounds_per_epoch=3),
    Row("fed-contrastive-3x", "Contrastive, federated, 3 rounds per epoch", "contrastive", group="federated",
        trainer="federate", rounds_per_epoch=3),
]
#: the centralised row each federated row is paired with (`crosssite report --against`)
FEDERATED_PAIRS = {"fedavg": "joint-redesign", "fedbn": "sepnorm", "fed-contrastive": "contrastive",
                   "fedavg-3x": "joint-redesign", "fedbn-3x": "sepnorm", "fed-contrastive-3x": "contrastive"}
CENTRALISED_ROWS = TABLE1_ROWS + ABLATION_ROWS + GROUPED_ROWS
ROWS = CENTRALISED_ROWS + FEDERATED_ROWS  # the one list of rows a sweep can run, in report order
ROW_BY_NAME = {r.name: r for r in ROWS}
#: `all` is every centralised row (a federated job is a different experiment: ask for `federated`)
ROW_GROUPS = {"table1": TABLE1_ROWS, "ablations": ABLATION_ROWS, "grouped": GROUPED_ROWS,
              "federated": FEDERATED_ROWS, "all": CENTRALISED_ROWS}

#: the paper's method: the first row of Tables II and III, the model of the Grad-CAM figures
OURS = "contrastive"
#: Table I's columns: every metric of crosssite.metrics but specificity
TABLE1_METRICS = ("accuracy", "f1", "recall", "precision", "auc")
#: the metric whose paired differences Tables II, III and A-E report
COMPARED_METRIC = "auc"
#: Table II: the paper's method against the baselines; Table III: against the comparison methods
TABLE2 = ("single-redesign", "joint-redesign", "sepnorm")
TABLE3 = ("series-adapter", "parallel-adapter", "ms-net")
#: the tables of paired differences: (number, file stem, (row a, row b) pairs reported as a - b, title)
COMPARISONS = (
    ("II", "table2", tuple((OURS, r) for r in TABLE2), "contrastive vs Single, Joint and SepNorm"),
    ("III", "table3", tuple((OURS, r) for r in TABLE3), "contrastive vs the comparison methods"),
    ("A", "ablations", tuple((r.name, OURS) for r in ABLATION_ROWS),
     "ablations of the contrastive method vs the method as published"),
    ("B", "ablations_vs_sepnorm", tuple((r.name, "sepnorm") for r in ABLATION_ROWS),
     "ablations of the contrastive method vs SepNorm, the same networks without the contrastive loss"),
    ("C", "redesign", (("single-redesign", "single-covidnet"), ("joint-redesign", "joint-covidnet")),
     "the redesigned COVID-Net vs the original, trained as Single and as Joint"),
    ("D", "site_batch_norm", (("sepnorm", "joint-redesign"),),
     "site-specific batch norm alone: SepNorm vs Joint, both redesigned"),
    ("E", "vs_single", tuple((r, "single-redesign") for r in ("joint-redesign", *TABLE3, "sepnorm")),
     "the other cross-site methods vs training each site alone (Single, redesigned)"),
)
#: Fig. 3's panels: (title, rows)
FIG3_PANELS = (
    ("(a) Single and Joint, both backbones", ("single-covidnet", "single-redesign", "joint-covidnet", "joint-redesign")),
    ("(b) Contrastive vs Single and Joint", (OURS, "single-redesign", "joint-redesign")),
    ("(c) Contrastive vs comparison methods", (OURS, *TABLE3)),
)


def select_rows(names: list[str]) -> list[Row]:
    """Rows by name or group (table1, ablations, grouped, federated, all: every centralised row), in report
    order; a name may be a comma-separated list."""
    wanted = [n for item in names for n in item.replace(",", " ").split()]
    unknown = [n for n in wanted if n not in ROW_BY_NAME and n not in ROW_GROUPS]
    if unknown or not wanted:
        raise CrossSiteError(
            f"unknown row(s) {', '.join(unknown) or '(none given)'} for --rows; known: "
            f"{', '.join(ROW_GROUPS)}, {', '.join(ROW_BY_NAME)}"
        )
    chosen = {r.name for n in wanted for r in ROW_GROUPS.get(n, [ROW_BY_NAME.get(n)])}
    return [r for r in ROWS if r.name in chosen]  # report order, whatever the order given


def planned_names(rows: list[Row], folds: int, seeds: int, row_seeds: dict[str, int]) -> list[tuple[Row, int, int]]:
    """Every (row, fold, seed) in running order, so that a stopped sweep holds whole seeds of its main
    comparison: the paper's rows run at every seed first (seeds outermost), then the other rows run at
    every seed (ablations), then the rows run at fewer seeds."""
    cells = [(row, fold, seed) for seed in range(seeds) for row in rows for fold in range(folds)
             if seed < row_seeds.get(row.name, seeds)]
    # sorted is stable: within a key, rows keep report order and folds their order
    return sorted(cells, key=lambda c: (c[0].name in row_seeds, c[0].group != "table1", c[2]))
