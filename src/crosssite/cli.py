"""The `crosssite` command line: train, evaluate, predict, export, card, demo, sweep, report, calibrate, federate, ..."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import warnings
from pathlib import Path

from . import distributed, run_folder
from .config import EVAL_BATCH_SIZE, TrainConfig, load_config, setting_type
from .data.duplicates import DEFAULT_THRESHOLD
from .data.sites import SAMPLE_DATA
from .errors import CrossSiteError, print_warning
from .decision_report import format_decisions
from .metrics import format_metrics
from .operating_point import DEFAULT_RULE, DEFAULT_SENSITIVITY, RULES
from .pacs import DEFAULT_CALLED_AE, DEFAULT_CALLING_AE
from .presets import PRESETS, get_preset
from .runtime import ensure_malloc_tuning


DEVICE_HELP = "auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N"
COMPILE_HELP = (
    "torch.compile the network first (~15 s at 224 px on 2 CPU cores; pays only for thousands of images, "
    "see docs/speed.md)"
)


def batch_size(text) -> int:
    """--batch-size, checked after parsing so that a bad value is crosssite's one line, not argparse's usage."""
    try:
        value = int(text)
    except ValueError:
        raise CrossSiteError(f"--batch-size {text!r}: expected a whole number of at least 1") from None
    if value < 1:
        raise CrossSiteError(f"--batch-size {value}: must be at least 1")
    return value


def path_text(text: str) -> str:
    """A file or folder name: an empty one would mean the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a file or folder, got ''")
    return text


def registry_help(name: str) -> str:
    """--method and --backbone list what the registries hold (a new method or backbone shows up itself)."""
    from .methods import METHODS
    from .models import MODELS

    if name == "method":
        return ", ".join(METHODS)
    both = [m for m, cls in METHODS.items() if len(cls.supported_backbones()) > 1]
    return f"{' or '.join(MODELS)} ({' and '.join(both)} take {'both' if len(MODELS) == 2 else 'all'})"


SETTINGS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def add_setting_flag(parser: argparse.ArgumentParser, name: str) -> None:
    """The flag of TrainConfig field `name`, from its `setting` metadata (crosssite.config)."""
    meta = SETTINGS[name].metadata
    flag = meta.get("flag", "--" + name.replace("_", "-"))
    help_text = f"{meta['help']}: {registry_help(name)}" if name in ("method", "backbone") else meta["help"]
    kind = setting_type(name)
    if "action" in meta:
        parser.add_argument(flag, dest=name, action=meta["action"], metavar=meta.get("metavar"), help=help_text)
    elif kind is bool:
        parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
    else:
        parser.add_argument(flag, dest=name, type=meta.get("parse") or kind, default=None, help=help_text)


def add_site_flag(parser: argparse.ArgumentParser) -> None:
    add_setting_flag(parser, "sites")


def add_aggregate_flags(parser: argparse.ArgumentParser) -> None:
    """How a scan's (or patient's) P(COVID) follows from its slices' (crosssite.scans)."""
    from .scans import AGGREGATE, AGGREGATES, TOP_K

    parser.add_argument("--aggregate", choices=AGGREGATES, default=AGGREGATE,
                        help="scan / patient P(COVID): mean of the top-k slices (default), max or mean")
    parser.add_argument("--top-k", type=int, default=TOP_K, help="k of --aggregate topk (default %(default)s)")


def add_setting_flags(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """A flag for every TrainConfig field but those in `exclude`."""
    for name in SETTINGS:
        if name not in exclude:
            add_setting_flag(parser, name)


def setting_changes(args) -> dict:
    """The TrainConfig fields set on the command line (flags added by `add_setting_flags`)."""
    return {name: getattr(args, name) for name in SETTINGS if getattr(args, name, None) is not None}


def config_from_args(args) -> TrainConfig:
    """Defaults, then the --config file, then the flags given on the command line."""
    config = load_config(args.config) if args.config else TrainConfig()
    return config.replace(**setting_changes(args))


def cmd_train(args) -> None:
    from .train import train

    config = config_from_args(args)
    if config.data is None and not config.sites:
        raise CrossSiteError("no data: pass --data DIR and/or --site NAME=PATH (or run `crosssite demo`)")
    finished = args.resume and (Path(config.out) / run_folder.METRICS).exists()
    with distributed.launched():  # under torchrun: one of several processes (crosssite.distributed)
        metrics = train(config, resume=args.resume, progress=not args.quiet, device=args.device)
        if not distributed.is_main():
            return
    if finished:
        print(f"{config.out}: this run is finished; --resume changed nothing")
    print(f"test metrics of {Path(config.out) / 'best.pt'} (epoch {metrics['best_epoch']}):")
    print(format_metrics(metrics["sites"]))


def cmd_demo(args) -> None:
    from .train import train

    config = get_preset("demo").config.replace(epochs=args.epochs, out=args.out)
    print(f"demo: contrastive cross-site training on the shipped sample ({SAMPLE_DATA}),")
    print(f"      {config.epochs} epochs at {config.image_size} px, width {config.width}; run folder {config.out}")
    metrics = train(config, resume=(Path(config.out) / run_folder.CONFIG).exists(), progress=not args.quiet)
    print(f"test metrics of {Path(config.out) / 'best.pt'} (epoch {metrics['best_epoch']}):")
    print(format_metrics(metrics["sites"]))
    print("These are a few dozen images at toy settings; see README.md for real runs on the full datasets.")


def cmd_evaluate(args) -> None:
    from .evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, args.part, args.data, args.sites, args.split_file, args.fold,
                                 args.as_site, args.batch_size, compile=args.compile, device=args.device,
                                 how=args.aggregate, top_k=args.top_k)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.part} metrics of {args.checkpoint} ({result['split']}):")
    print(format_metrics(result["sites"]))
    for level, per_group in (("scan", result["scans"]), ("patient", result["patients"])):
        if per_group:
            print(f"{level}-level ({result['aggregate']}, n = {level}s):")
            print(format_metrics(per_group))
    print(format_decisions(result["decisions"]))


def cmd_predict(args) -> None:
    from .predict import TORCH, load_for_prediction, predict_images

    if args.send and not args.dicom_out:
        raise CrossSiteError("--send stores the SRs of --dicom-out DIR: give --dicom-out too")
    if args.dicom_gradcam and not args.dicom_out:
        raise CrossSiteError("--dicom-gradcam writes beside the SRs of --dicom-out DIR: give --dicom-out too")
    if args.dicom_gradcam and args.backend != TORCH:
        raise CrossSiteError(f"--dicom-gradcam needs the checkpoint's gradients: only for --backend torch, not {args.backend}")
    # the Grad-CAM captures explain the model that predicts: load it once for both
    trained = load_for_prediction(Path(args.checkpoint), args.device) if args.dicom_gradcam else None
    rows = predict_images(Path(args.checkpoint), args.site, [Path(p) for p in args.images], args.batch_size,
                          compile=args.compile, device=args.device, how=args.aggregate, top_k=args.top_k,
                          backend=args.backend, threshold=args.threshold, trained=trained)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        if "bn_distance" in rows[0]:
            distances = ", ".join(f"{n} {d:.4g}" for n, d in rows[0]["bn_distance"].items())
            print(f"site auto: {rows[0]['site']} (batch-norm distance: {distances})", file=sys.stderr)
        for line in dict.fromkeys(f"site {r['site']}: threshold {r['threshold']:.4g} ({r['operating_point']}); "
                                  f"{r['calibration']}" for r in rows):
            print(line, file=sys.stderr)
        for r in rows:
            for s in r.get("slices", []):
                print(f"{s['path']}\tP(COVID)={s['p_covid']:.4f}\t{s['label']}{ood_note(s)}")
            scan_note = f"\tscan: {r['aggregate']} of {len(r['slices'])}" if "slices" in r else ""
            print(f"{r['path']}\tP(COVID)={r['p_covid']:.4f}\t{r['label']}{ood_note(r)}{scan_note}")
    if args.dicom_out:
        from .dicom_sr import write_reports
        from .predict import model_facts

        written, notes = write_reports(rows, Path(args.dicom_out), model_facts(Path(args.checkpoint), args.backend))
        if args.dicom_gradcam:
            from .dicom_gradcam import write_captures

            written += write_captures(rows, Path(args.dicom_out), trained, args.top_k)
        for note in notes:
            print(f"crosssite: note: {note}", file=sys.stderr)
        for path in written:
            print(f"wrote {path}", file=sys.stderr)
        if args.send and written:
            from .pacs import send

            send(written, args.send, args.called_ae, args.calling_ae)
            print(f"sent {len(written)} DICOM file(s) to {args.called_ae}@{args.send}", file=sys.stderr)


def ood_note(row: dict) -> str:
    return {None: "", False: "", True: "\tOUT-OF-DISTRIBUTION (far from every training site)"}[row.get("ood")]


def cmd_export(args) -> None:
    from .export import export_checkpoint

    metadata = export_checkpoint(Path(args.checkpoint), args.site, args.format, Path(args.out), args.batch_size)
    agreement = metadata["agreement"]
    print(f"{args.out}: {args.format} export of site {args.site}, {metadata['input']['image_size']} px; agrees with "
          f"PyTorch on {agreement['images']} images ({agreement['source']}): max |P(COVID) difference| "
          f"{agreement['max_abs_diff']:.1e} (tolerance {agreement['tolerance']:.0e}), no label changed")


def cmd_card(args) -> None:
    from .card import write_card

    for path in write_card(Path(args.run)):
        print(f"wrote {path}")


def cmd_audit(args) -> None:
    from .audit import run_audit

    print(run_audit(args.data, args.sites or [], args.split, args.out, args.threshold, args.window, args.slices))


def cmd_adapt(args) -> None:
    from .adapt import adapt_checkpoint

    record = adapt_checkpoint(Path(args.checkpoint), args.site, Path(args.out), args.batch_size)
    print(f"{args.out}: site {record['site']} added from {record['images']} unlabelled images in {record['source']} "
          f"(AdaBN); predict with: crosssite predict {args.out} --site {record['site']} IMG ...")


def add_launcher_flags(parser: argparse.ArgumentParser) -> None:
    """--launcher, and the --slurm-* flags from SlurmLauncher's fields (crosssite.slurm)."""
    from .slurm import SlurmLauncher
    from .launchers import LAUNCHERS

    parser.add_argument("--launcher", choices=list(LAUNCHERS), default="local",
                        help="where jobs run: local (this machine; --jobs, --devices) or slurm (a Slurm cluster "
                             "through submitit, extra [slurm]; --slurm-*); not a sweep setting: a restart may change it")
    group = parser.add_argument_group("--launcher slurm")
    for f in dataclasses.fields(SlurmLauncher):
        if "help" in f.metadata:
            meta = f.metadata
            group.add_argument(meta.get("flag", "--slurm-" + f.name.replace("_", "-")), dest="slurm_" + f.name,
                               type=meta.get("parse") or {"int": int, "int | None": int}.get(f.type, str),
                               action=meta.get("action", "store"), metavar=meta.get("metavar", f.name.upper()), help=meta["help"])


def launcher_from_args(args):
    """The --launcher named, built from its own flags; a flag of the other launcher is refused."""
    from .launchers import LAUNCHERS

    slurm = {name[len("slurm_"):]: v for name, v in vars(args).items() if name.startswith("slurm_")}
    if slurm["options"] is not None:
        slurm["options"] = dict(slurm["options"])
    options = {"local": {"jobs": args.jobs, "devices": args.devices}, "slurm": slurm}
    stray = sorted(k for name, given in options.items() if name != args.launcher for k, v in given.items() if v is not None)
    if stray:
        prefix = "slurm-" if args.launcher == "local" else ""
        raise CrossSiteError(f"--{prefix}{stray[0].replace('_', '-')} does not apply to --launcher {args.launcher}")
    return LAUNCHERS[args.launcher](**{k: v for k, v in options[args.launcher].items() if v is not None})


def cmd_calibrate(args) -> None:
    from .calibrate import calibrate_checkpoint

    out = Path(args.out or args.checkpoint)
    fitted = calibrate_checkpoint(Path(args.checkpoint), args.sites, out, args.rule, args.sensitivity, args.batch_size)
    for site, d in fitted.items():
        cal = d["calibration"]
        cal_text = f"Platt a={cal['a']:.3g} b={cal['b']:.3g}" if cal else "no calibration map (a class missing)"
        ood_text = f"OOD threshold {d['ood']['threshold']:.4g}" if d["ood"] else "no OOD threshold"
        print(f"{site}: {cal_text}; threshold {d['operating_point']['threshold']:.4g} "
              f"({d['operating_point']['rule']}); {ood_text}; fitted on {d['fit_on']}")
    print(f"wrote {out}")


def cmd_sweep(args) -> None:
    from .paper import select_rows
    from .sweep import parse_row_seeds, run_sweep

    preset = get_preset(args.preset)
    config = preset.config.replace(**setting_changes(args))
    if config.data is None and not config.sites:
        raise CrossSiteError("no data: pass --data DIR and/or --site NAME=PATH")
    seeds = preset.seeds if args.seeds is None else args.seeds
    rows = select_rows(args.rows)
    command = shlex.join(["crosssite", *sys.argv[1:]])
    records = run_sweep(config, rows, seeds, Path(args.out), progress=not args.quiet, launcher=launcher_from_args(args),
                        row_seeds=parse_row_seeds(args.row_seeds, rows, seeds), command=command)
    failed = [r["job"] for r in records if r["status"] != "ok"]
    print(f"{args.out}: {len(records)} job(s) run, {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}")
    print(f"results in {Path(args.out) / 'results.jsonl'}; tables and figures: crosssite report {args.out}")


def cmd_federate(args) -> None:
    from .federated.local import federate
    from .federated.settings import settings_from_args

    settings = settings_from_args(args)
    config = config_from_args(args).replace(epochs=settings.rounds * settings.epochs_per_round)
    if args.flower_app:
        from .federated.loopback import require_flower, write_app

        require_flower()
        app = write_app(Path(args.flower_app), config.replace(out=str(Path(config.out).resolve())), settings)
        print(f"{app}: a Flower App of crosssite's ServerApp and ClientApp with these settings (the coordinator "
              f"writes {config.out}); run it with `flwr run {app} CONNECTION` once the SuperLink and each "
              "hospital's SuperNode run (docs/federated.md, 'The real deployment')")
        return
    if config.data is None and not config.sites:
        raise CrossSiteError("no data: pass --data DIR and/or --site NAME=PATH")
    if args.insecure and not args.flower:
        raise CrossSiteError("--insecure turns off the TLS and node authentication of --flower; it means nothing without it")
    if args.flower:
        from .federated.loopback import federate_over_flower

        summary = federate_over_flower(config, settings, resume=args.resume, insecure=args.insecure)
    else:
        summary = federate(config, settings, resume=args.resume, progress=not args.quiet, processes=args.processes)
    print(f"{config.out}: {summary['rounds']} rounds; each site's run folder is {config.out}/SITE "
          f"(best.pt on its own validation AUC); test metrics of each site's best.pt:")
    print(format_metrics(summary["sites"]))
    pooled = summary["pooled"]
    print(f"pooled over all sites' test images (n={pooled['n']}): "
          + ", ".join(f"{k} {100 * v:.2f}%" for k, v in pooled.items() if k != "n"))


def cmd_report(args) -> None:
    from .report import load_results, primary_contrast, primary_lines, write_report

    print(f"wrote {write_report(Path(args.folder), args.examples, Path(args.against) if args.against else None)}")
    contrast = primary_contrast(load_results(Path(args.folder)))
    if contrast is not None:  # the sweep holds docs/preregistration.md's pair: its analysis, as report.md has it
        print("\npre-registered comparison (docs/preregistration.md):\n" + "\n".join(primary_lines(contrast)).rstrip())


def cmd_tensorboard(args) -> None:
    from .tensorboard import FOLDER, write_events

    paths = [Path(p).resolve() for p in args.runs]
    runs = write_events(paths)
    print(f"wrote {FOLDER}/ event files in {len(runs)} run folder(s); view them with: "
          f"tensorboard --logdir {shlex.quote(os.path.commonpath(paths))}")


def cmd_gradcam(args) -> None:
    from .gradcam import gradcam_images

    target = {"covid": 1, "noncovid": 0}[args.target]
    for path in gradcam_images(Path(args.checkpoint), args.site, [Path(p) for p in args.images], Path(args.out), target):
        print(path)


def cmd_params(args) -> None:
    from .methods import METHODS
    from .methods.params import count_parameters, format_table

    config = TrainConfig(width=args.width, image_size=args.image_size)
    config.validate()
    if args.sites < 1:
        raise CrossSiteError(f"--sites must be at least 1, got {args.sites}")
    names = args.methods or list(METHODS)
    rows = {name: count_parameters(name, config, args.sites) for name in names}
    print(f"parameters at width {config.width}, {config.image_size} px, {args.sites} sites:")
    print(format_table(rows))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crosssite", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a method on one fold and test the best validation checkpoint")
    train.add_argument("--config", help="YAML settings file (e.g. a run's config.yaml); flags override it")
    add_setting_flags(train)
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--device", default="auto", help=DEVICE_HELP)
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=cmd_train)

    demo = sub.add_parser("demo", help="a short real training + evaluation on the shipped sample")
    demo_config = get_preset("demo").config
    demo.add_argument("--out", default=demo_config.out, type=path_text)
    demo.add_argument("--epochs", type=int, default=demo_config.epochs)
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=cmd_demo)

    evaluate = sub.add_parser("evaluate", help="per-site metrics of a checkpoint on a part of a split")
    evaluate.add_argument("checkpoint")
    evaluate.add_argument("--data", help="data folder (default: the one the checkpoint was trained on)")
    add_site_flag(evaluate)
    evaluate.add_argument("--split-file", help="split.json to use (default: the one beside the checkpoint)")
    evaluate.add_argument("--fold", type=int, help="recompute the split for this fold instead of reading split.json")
    evaluate.add_argument("--part", choices=("train", "val", "test", "all"), default="test",
                          help="part of the split, or 'all': every image (for a site the run never saw)")
    evaluate.add_argument("--as-site", metavar="KNOWN",
                          help="evaluate sites the checkpoint does not know with the batch norms of site KNOWN")
    add_aggregate_flags(evaluate)
    evaluate.add_argument("--batch-size", type=str, default=EVAL_BATCH_SIZE)
    evaluate.add_argument("--json", action="store_true")
    evaluate.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    evaluate.add_argument("--device", default="auto", help=DEVICE_HELP)
    evaluate.set_defaults(func=cmd_evaluate)

    from .export_formats import EXPORT_FORMATS
    from .predict import TORCH, backends

    exports_help = "; ".join(f"{f.backend}: {f.files} (--format {f.name})" for f in EXPORT_FORMATS.values())
    predict = sub.add_parser("predict", help="P(COVID) for new images or CT scans (series folders, volumes) of a known site")
    predict.add_argument("checkpoint", help="a checkpoint (torch backend), or an export or a folder of them, one per "
                                            f"site ({exports_help})")
    predict.add_argument("--site", required=True,
                         help="which site's batch norms to use, or 'auto': the site whose statistics are closest")
    predict.add_argument("images", nargs="+", metavar="IMG_OR_SCAN")
    add_aggregate_flags(predict)
    predict.add_argument("--batch-size", type=str, default=EVAL_BATCH_SIZE)
    predict.add_argument("--json", action="store_true")
    predict.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    predict.add_argument("--device", default="auto", help=DEVICE_HELP)
    predict.add_argument("--backend", choices=backends(), default=TORCH,
                         help=f"torch (a checkpoint), or exports of `crosssite export` on the CPU: {exports_help}")
    predict.add_argument("--threshold", type=float, metavar="P",
                         help="call COVID at calibrated P(COVID) >= P instead of the site's operating point "
                              "chosen on validation (crosssite calibrate; docs/pacs.md)")
    predict.add_argument("--dicom-out", metavar="DIR", type=path_text,
                         help="write one DICOM Structured Report per DICOM series read into DIR (extra [dicom-out])")
    predict.add_argument("--dicom-gradcam", action="store_true",
                         help="with --dicom-out: also a Grad-CAM Secondary Capture of each series' top slices, in its study")
    predict.add_argument("--send", metavar="HOST:PORT", help="C-STORE the DICOM files of --dicom-out to this PACS")
    predict.add_argument("--called-ae", default=DEFAULT_CALLED_AE, help="the PACS's AE title (default %(default)s)")
    predict.add_argument("--calling-ae", default=DEFAULT_CALLING_AE, help="crosssite's AE title (default %(default)s)")
    predict.set_defaults(func=cmd_predict)

    export = sub.add_parser("export", help=f"one site's network as a file of an export format "
                                           f"({', '.join(EXPORT_FORMATS)}), checked against PyTorch")
    export.add_argument("checkpoint")
    export.add_argument("--site", required=True, help="the site whose batch norms are folded into the file")
    export.add_argument("--format", choices=list(EXPORT_FORMATS), default="onnx",
                        help="; ".join(f"{f.name}: {f.files}, run by predict --backend {f.backend}"
                                       for f in EXPORT_FORMATS.values()))
    export.add_argument("--out", required=True, help="file to write, e.g. covid-ct.onnx")
    export.add_argument("--batch-size", type=str, default=EVAL_BATCH_SIZE, help="batch size of the agreement check")
    export.set_defaults(func=cmd_export)

    card = sub.add_parser("card", help="MODEL_CARD.md and metadata.json for a run folder")
    card.add_argument("run", help="a run folder (train --out, or the demo's runs/demo)")
    card.set_defaults(func=cmd_card)

    from .paper import ROW_GROUPS, ROWS

    sweep = sub.add_parser("sweep", help="train every Table I job (rows x folds x seeds); restart to resume")
    sweep.add_argument(
        "--preset", choices=list(PRESETS), default="paper",
        help="base settings, which flags override: " + "; ".join(f"{k}: {p.about}" for k, p in PRESETS.items()),
    )
    sweep.add_argument(
        "--rows", "--methods", dest="rows", nargs="+", default=["all"], metavar="ROW",
        help="rows (--methods is an alias), comma or space separated: a group (" + ", ".join(ROW_GROUPS) + "; default all) or rows: "
        + ", ".join(r.name for r in ROWS),
    )
    sweep.add_argument("--seeds", type=int, help="number of seeds, run as 0..N-1 (default: the preset's)")
    sweep.add_argument(
        "--row-seeds", action="append", metavar="ROWS=N",
        help="run these rows (a group or comma list) at N < --seeds seeds only; repeatable; they run after the others",
    )
    sweep.add_argument("--out", required=True, type=path_text, help="sweep folder, e.g. results/NAME")
    add_setting_flags(sweep, exclude=("method", "backbone", "fold", "seed", "out"))
    sweep.add_argument(
        "--jobs", type=int,
        help="jobs run at once in worker processes that split the CPU cores (default: one per --devices entry, else 1)",
    )
    sweep.add_argument(
        "--devices", type=lambda text: [d.strip() for d in text.split(",") if d.strip()], metavar="LIST",
        help="comma-separated devices, worker i on the i-th (cycled), e.g. cuda:0,cuda:1; "
        "default: auto for every worker (" + DEVICE_HELP + ")",
    )
    add_launcher_flags(sweep)
    sweep.add_argument("--quiet", action="store_true", help="no progress bar")
    sweep.set_defaults(func=cmd_sweep)

    federate = sub.add_parser("federate", help="federated training: each site trains on its own images, shared "
                              "weights are averaged (FedAvg for joint, FedBN for site-specific methods)")
    federate.add_argument("--config", help="YAML training settings; flags override it")
    add_setting_flags(federate, exclude=("epochs",))
    from .federated.settings import add_settings_flags
    add_settings_flags(federate)
    transport = federate.add_mutually_exclusive_group()
    transport.add_argument("--processes", action="store_true",
                           help="one process per site, training side by side (default: every site in this process)")
    transport.add_argument("--flower", action="store_true",
                           help="run it as a Flower deployment on this machine: a SuperLink and one SuperNode per "
                           "site on 127.0.0.1, TLS and registered node keys (needs the [fed] extra)")
    transport.add_argument("--flower-app", metavar="DIR",
                           help="write the Flower App of this federation to DIR for `flwr run` at a real "
                           "coordinator, and stop (needs the [fed] extra)")
    federate.add_argument("--insecure", action="store_true",
                          help="with --flower: no TLS, no node authentication (only for processes on one trusted machine)")
    federate.add_argument("--resume", action="store_true", help="continue the federation in --out")
    federate.add_argument("--quiet", action="store_true", help="no progress bars")
    federate.set_defaults(func=cmd_federate)

    report = sub.add_parser("report", help="Tables I-III and Figs. 3-5 of a sweep folder: report.md, CSV, LaTeX, PNG")
    report.add_argument("folder", help="the sweep's --out folder")
    report.add_argument("--examples", type=int, default=4, help="Grad-CAM images per site, correct and wrong each")
    report.add_argument("--against", metavar="SWEEP", help="a sweep of the same settings whose centralised rows the "
                        "federated rows are paired with (e.g. results/cpu for results/federated)")
    report.set_defaults(func=cmd_report)

    tensorboard = sub.add_parser("tensorboard", help="TensorBoard event files from run folders' train_log.jsonl "
                                                     "(and metrics.json), e.g. of a whole sweep; extra [tensorboard]")
    tensorboard.add_argument("runs", nargs="+", metavar="RUN_OR_SWEEP", help="run folders, or folders holding them")
    tensorboard.set_defaults(func=cmd_tensorboard)

    gradcam = sub.add_parser("gradcam", help="Grad-CAM overlays (last conv stage) of images, one PNG each")
    gradcam.add_argument("checkpoint")
    gradcam.add_argument("--site", required=True, help="which site's network / batch norms to use")
    gradcam.add_argument("images", nargs="+", metavar="IMG")
    gradcam.add_argument("--out", required=True, type=path_text, help="folder for the PNGs")
    gradcam.add_argument("--target", choices=("covid", "noncovid"), default="covid", help="class whose map is drawn")
    gradcam.set_defaults(func=cmd_gradcam)

    audit = sub.add_parser("audit", help="exact and near-duplicate image pairs, and pairs straddling a split")
    audit.add_argument("--data", help="folder holding the sites' original layouts")
    add_site_flag(audit)
    audit.add_argument("--split", metavar="RUN", help="run folder (or its split.json): list pairs across its parts "
                                                      "(CT scans: the run's --window and --slices unless given)")
    add_setting_flag(audit, "window")
    add_setting_flag(audit, "slices")
    audit.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                       help="near duplicate: 32x32 thumbnail correlation at least this (default %(default)s)")
    audit.add_argument("--out", required=True, type=path_text, help="folder for pairs.csv")
    audit.set_defaults(func=cmd_audit)

    adapt = sub.add_parser("adapt", help="add a new site to a site-specific-BN checkpoint from unlabelled images")
    adapt.add_argument("checkpoint")
    adapt.add_argument("--site", required=True, metavar="NAME=PATH", help="new site name and its image folder")
    adapt.add_argument("--out", required=True, type=path_text, help="new checkpoint file")
    adapt.add_argument("--batch-size", type=str, default=EVAL_BATCH_SIZE)
    adapt.set_defaults(func=cmd_adapt)

    calibrate = sub.add_parser("calibrate", help="fit a checkpoint's calibration map, operating point and OOD "
                                                  "threshold per site, on validation or a labelled set")
    calibrate.add_argument("checkpoint")
    calibrate.add_argument("--site", dest="sites", action="append", default=[], metavar="NAME=PATH",
                           help="fit site NAME of the checkpoint (e.g. one added by adapt) on every image of the "
                                "labelled set PATH; repeatable (default: every site on the run's validation part)")
    calibrate.add_argument("--rule", choices=sorted(RULES), default=DEFAULT_RULE,
                           help="operating point: a target sensitivity on validation, or Youden's J")
    calibrate.add_argument("--sensitivity", type=float, default=DEFAULT_SENSITIVITY,
                           help="the target of --rule sensitivity (default %(default)s)")
    calibrate.add_argument("--out", type=path_text, help="checkpoint to write (default: update CHECKPOINT)")
    calibrate.add_argument("--batch-size", type=str, default=EVAL_BATCH_SIZE)
    calibrate.set_defaults(func=cmd_calibrate)

    params = sub.add_parser("params", help="total, shared and per-site parameter counts of methods")
    params.add_argument("--method", dest="methods", action="append", help="a method (repeatable; default: all)")
    params.add_argument("--width", type=float, default=1.0, help="channel multiplier (1.0 = paper)")
    params.add_argument("--image-size", type=int, default=224, help="input size in pixels")
    params.add_argument("--sites", type=int, default=2, help="number of sites")
    params.set_defaults(func=cmd_params)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command line; `argv` None means sys.argv (then the process may first re-execute itself
    once with faster malloc settings, see crosssite.runtime)."""
    if argv is None:
        ensure_malloc_tuning()
    args = build_parser().parse_args(argv)
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 prints escaped, never crashes
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        if isinstance(getattr(args, "batch_size", None), str):
            args.batch_size = batch_size(args.batch_size)
        with warnings.catch_warnings():
            warnings.showwarning = print_warning
            args.func(args)
    except CrossSiteError as e:
        print(f"crosssite: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an existing file where a folder should be, a read-only folder, a full disk
        where = f"{e.filename}: " if e.filename else ""
        print(f"crosssite: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("crosssite: interrupted (a training run continues with --resume)", file=sys.stderr)
        return 130
    return 0
