"""The `crosssite` command line: train, evaluate, predict, demo."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .config import TrainConfig, load_config
from .data.sites import SAMPLE_DATA
from .errors import CrossSiteError

# flags of `train` that set a TrainConfig field: (flag, field, type, help)
SETTING_FLAGS = [
    ("--method", "method", str, "training method: single, joint, sepnorm, contrastive, ..."),
    ("--backbone", "backbone", str, "covidnet or covidnet-redesign (single and joint take both)"),
    ("--data", "data", str, "folder holding the sites' original layouts (e.g. ../shared/data)"),
    ("--split", "split", str, "'fold' (stratified, patient-grouped k-fold) or 'official' (COVID-CT's split)"),
    ("--fold", "fold", int, "test fold index"),
    ("--folds", "folds", int, "number of cross-validation folds"),
    ("--seed", "seed", int, "random seed (splits, initialisation, sampling, augmentation)"),
    ("--epochs", "epochs", int, "training epochs"),
    ("--batch-per-site", "batch_per_site", int, "images per site in a step"),
    ("--image-size", "image_size", int, "input size in pixels, a multiple of 32"),
    ("--width", "width", float, "channel multiplier of the backbone (1.0 = paper)"),
    ("--lr", "lr", float, "Adam learning rate (cosine-annealed to 0)"),
    ("--weight-decay", "weight_decay", float, "Adam weight decay"),
    ("--grad-clip", "grad_clip", float, "gradient-norm clipping"),
    ("--temperature", "temperature", float, "NT-Xent temperature"),
    ("--alpha", "alpha", float, "weight of the contrastive loss"),
    ("--eval-batch-size", "eval_batch_size", int, "batch size for validation and test"),
    ("--out", "out", str, "run folder"),
]
assert {f for _, f, _, _ in SETTING_FLAGS} | {"sites", "pepx_relu"} == {f.name for f in dataclasses.fields(TrainConfig)}


def add_site_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--site",
        dest="sites",
        action="append",
        metavar="NAME=PATH",
        help="add a site (or override a discovered one); repeatable",
    )


def config_from_args(args) -> TrainConfig:
    """Defaults, then the --config file, then the flags given on the command line."""
    config = load_config(args.config) if args.config else TrainConfig()
    changes = {f: getattr(args, f) for _, f, _, _ in SETTING_FLAGS if getattr(args, f) is not None}
    if args.sites is not None:
        changes["sites"] = args.sites
    if args.pepx_relu is not None:
        changes["pepx_relu"] = args.pepx_relu
    return config.replace(**changes)


def format_metrics(per_site: dict[str, dict]) -> str:
    names = ("accuracy", "f1", "recall", "precision", "auc", "specificity")
    width = max(len(s) for s in per_site) + 2
    lines = ["site".ljust(width) + "".join(n.rjust(12) for n in names) + "n".rjust(6)]
    for site, m in per_site.items():
        lines.append(site.ljust(width) + "".join(f"{100 * m[n]:11.2f}%" for n in names) + str(m["n"]).rjust(6))
    return "\n".join(lines)


def cmd_train(args) -> None:
    from .train import train

    config = config_from_args(args)
    if config.data is None and not config.sites:
        raise CrossSiteError("no data: pass --data DIR and/or --site NAME=PATH (or run `crosssite demo`)")
    metrics = train(config, resume=args.resume, progress=not args.quiet)
    print(f"test metrics of {Path(config.out) / 'best.pt'} (epoch {metrics['best_epoch']}):")
    print(format_metrics(metrics["sites"]))


def cmd_demo(args) -> None:
    from .train import train

    config = TrainConfig(
        method="contrastive",
        data=str(SAMPLE_DATA),
        epochs=args.epochs,
        batch_per_site=8,
        image_size=64,
        width=0.25,
        lr=1e-3,
        out=args.out,
    )
    print(f"demo: contrastive cross-site training on the shipped sample ({SAMPLE_DATA}),")
    print(f"      {config.epochs} epochs at {config.image_size} px, width {config.width}; run folder {config.out}")
    metrics = train(config, resume=(Path(config.out) / "config.yaml").exists(), progress=not args.quiet)
    print(f"test metrics of {Path(config.out) / 'best.pt'} (epoch {metrics['best_epoch']}):")
    print(format_metrics(metrics["sites"]))
    print("These are a few dozen images at toy settings; see README.md for real runs on the full datasets.")


def cmd_evaluate(args) -> None:
    from .checkpoint import load_checkpoint, method_from_checkpoint
    from .data.images import DecodedCache
    from .data.sites import load_sites
    from .data.splits import load_splits, make_splits
    from .train import RunData, evaluate_part

    payload = load_checkpoint(Path(args.checkpoint))
    method, config, site_names = method_from_checkpoint(payload, args.checkpoint)
    data_dir = args.data or config.data
    sites = load_sites(Path(data_dir) if data_dir else None, args.sites if args.sites is not None else config.sites)
    missing = [n for n in site_names if n not in sites]
    if missing:
        raise CrossSiteError(f"{args.checkpoint}: trained on site(s) {', '.join(missing)}, which the data does not hold")
    sites = {n: sites[n] for n in site_names}
    split_file = Path(args.split_file) if args.split_file else Path(args.checkpoint).parent / "split.json"
    if args.fold is None and split_file.exists():
        splits = load_splits(split_file, sites)
        source = str(split_file)
    else:
        fold = config.fold if args.fold is None else args.fold
        splits = make_splits(sites, config.split, fold, config.folds, config.seed)
        source = f"{config.split} split, fold {fold}, seed {config.seed}"
    data = RunData(sites, splits, DecodedCache(config.image_size))
    per_site, _ = evaluate_part(method, data, args.part, args.batch_size)
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "part": args.part, "split": source, "sites": per_site}))
    else:
        print(f"{args.part} metrics of {args.checkpoint} ({source}):")
        print(format_metrics(per_site))


def cmd_predict(args) -> None:
    from .predict import predict_images

    rows = predict_images(Path(args.checkpoint), args.site, [Path(p) for p in args.images], args.batch_size)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['path']}\tP(COVID)={r['p_covid']:.4f}\t{r['label']}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crosssite", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a method on one fold and test the best validation checkpoint")
    train.add_argument("--config", help="YAML settings file (e.g. a run's config.yaml); flags override it")
    for flag, field, typ, help_text in SETTING_FLAGS:
        train.add_argument(flag, dest=field, type=typ, default=None, help=help_text)
    add_site_flag(train)
    train.add_argument(
        "--pepx-relu", action=argparse.BooleanOptionalAction, default=None, help="ReLU inside PEPX blocks"
    )
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=cmd_train)

    demo = sub.add_parser("demo", help="a short real training + evaluation on the shipped sample")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--epochs", type=int, default=12)
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=cmd_demo)

    evaluate = sub.add_parser("evaluate", help="per-site metrics of a checkpoint on a part of a split")
    evaluate.add_argument("checkpoint")
    evaluate.add_argument("--data", help="data folder (default: the one the checkpoint was trained on)")
    add_site_flag(evaluate)
    evaluate.add_argument("--split-file", help="split.json to use (default: the one beside the checkpoint)")
    evaluate.add_argument("--fold", type=int, help="recompute the split for this fold instead of reading split.json")
    evaluate.add_argument("--part", choices=("train", "val", "test"), default="test")
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(func=cmd_evaluate)

    predict = sub.add_parser("predict", help="P(COVID) for new images of a known site")
    predict.add_argument("checkpoint")
    predict.add_argument("--site", required=True, help="which site's batch norms to use")
    predict.add_argument("images", nargs="+", metavar="IMG")
    predict.add_argument("--batch-size", type=int, default=64)
    predict.add_argument("--json", action="store_true")
    predict.set_defaults(func=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except CrossSiteError as e:
        print(f"crosssite: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("crosssite: interrupted (a training run continues with --resume)", file=sys.stderr)
        return 130
    return 0
