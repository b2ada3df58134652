"""The training loop: joint per-site batches, cosine schedule, checkpoint selection on validation, resume.

Run folder (`config.out`; the names: crosssite.run_folder):
  config.yaml       resolved settings (reload with `crosssite train --config`)
  split.json        the exact train/val/test images of every site
  train_log.jsonl   one line per epoch: losses, learning rate, validation metrics
  tensorboard/      with --tensorboard: the same curves, and the test metrics, as TensorBoard events
  last.pt           everything needed to resume, rewritten atomically as `save_every` says (SavePacing)
  best.pt           weights with the best mean validation AUC over sites (evaluated on test); for a method
                    whose sites share nothing (single), each site's network from its own best epoch
  metrics.json      per-site test metrics of best.pt, and the test AUC of each of the last `tail_epochs` epochs
  predictions.csv   one row per test image: site, path, patient id (empty if none), label, P(COVID)
  tail_predictions.csv  the same rows for each of the last `tail_epochs` epochs (column `epoch`): the report's
                    final-epoch and last-k columns, which do not depend on the validation-chosen epoch.
                    Written only for the report; nothing is ever selected on it.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import decisions, distributed, run_folder
from .checkpoint import load_checkpoint, load_trained, save_checkpoint
from .config import EXECUTION_SETTINGS, TrainConfig, load_config, save_config
from .data.images import DecodedCache
from .data.sampling import epoch_batches
from .data.sites import load_sites, refuse_shared_images
from .data.splits import load_splits, make_splits, save_splits
from .data.transforms import random_crop_flip
from .errors import CrossSiteError, DivergedError
from .evaluate import RunData, evaluate_part
from .io import append_jsonl, atomic_write_text, read_jsonl
from .metrics import mean_auc, site_metrics
from .scans import describe, level_metrics
from .tensorboard import open_events
from .methods import check_method, create_method

#: steps between reads of the device (progress bar, divergence check); a read waits for the GPU
READ_EVERY = 25
WRITE_SHARE = 0.05  # with save_every 0, writing last.pt takes at most this share of the training time


class SavePacing:
    """When to write last.pt: every `every` epochs, or (every = 0) once the time since the last write is
    1 / WRITE_SHARE times what that write took. On an H100 at the paper's width a write took 0.92 s against
    a 6.3 s epoch (README, On a GPU): every epoch would add 15 %; paced, it is every 3-4 epochs. On a CPU
    an epoch takes far longer than a write, so every epoch is written. A killed run repeats at most the
    epochs since the last write, and ends the same (each epoch's randomness follows from seed and epoch)."""

    def __init__(self, every: int):
        self.every, self.unsaved_seconds, self.write_seconds = every, 0.0, 0.0

    def due(self, epoch: int, epochs: int, epoch_seconds: float) -> bool:
        self.unsaved_seconds += epoch_seconds
        if epoch == epochs:
            return True
        if self.every:
            return epoch % self.every == 0
        return self.unsaved_seconds * WRITE_SHARE >= self.write_seconds

    def written(self, seconds: float) -> None:
        self.unsaved_seconds, self.write_seconds = 0.0, seconds


def prepare_data(config: TrainConfig, out: Path, resume: bool, progress: bool = True,
                 keep_decoded: bool = False) -> RunData:
    """Read the sites, make (or on resume, reload) the split and decode every image once; writes nothing
    but, with `keep_decoded`, the decoded images (OUT/decoded.npz, for the next process of the same run), so
    bad data fails before a run folder is started."""
    sites = load_sites(Path(config.data) if config.data else None, config.sites, config.slices)
    refuse_shared_images(sites)
    split_file = out / run_folder.SPLIT
    if resume and split_file.exists():
        splits = load_splits(split_file, sites)
    else:
        splits = make_splits(sites, config.split, config.fold, config.folds, config.seed, config.group_duplicates,
                             config.window)
    data = RunData(sites, splits, DecodedCache(config.image_size, config.window))
    kept = keep_decoded and data.cache.load(out / run_folder.DECODED)
    for name in sites:
        evaluated = data.paths(name, "val") + data.paths(name, "test")
        data.cache.preload(data.paths(name, "train"), f"decode {name} train", variants=("train",), progress=progress)
        data.cache.preload(evaluated, f"decode {name} val+test", variants=("eval",), progress=progress)
    if keep_decoded and not kept:
        data.cache.save(out / run_folder.DECODED)
    return data


def train_batch(data: RunData, site: str, indices: np.ndarray, image_size: int, rng: np.random.Generator):
    """One site's augmented training batch (shared with federated sites, which must draw the same batches)."""
    samples = data.sites[site].samples
    chosen = [samples[data.splits[site]["train"][i]] for i in indices]
    images = random_crop_flip([data.cache.train_image(s.path) for s in chosen], image_size, rng)
    # uint8: normalised on the training device (crosssite.distributed), a quarter of the float traffic
    return torch.from_numpy(images), torch.tensor([s.label for s in chosen], dtype=torch.long)


def seed_everything(seed: int) -> None:
    """Seed torch and numpy, so a run (or a federated site) starts from the same weights as its twin."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def check_same_settings(config: TrainConfig, saved_file: Path) -> None:
    """--resume continues the same run: every setting but `out` (a run folder may be moved or copied)."""
    saved = load_config(saved_file).to_dict()
    changed = [k for k, v in config.to_dict().items() if saved.get(k) != v and k not in ("out", *EXECUTION_SETTINGS)]
    if changed:
        raise CrossSiteError(f"{saved_file}: --resume with different settings ({', '.join(changed)})")


def selection_units(method, names: list[str]) -> list[str]:
    """What best.pt is chosen on: each site's own validation AUC where the sites share nothing (`single`:
    one network per site), else the mean validation AUC over sites ("mean")."""
    return list(names) if method.independent_sites else ["mean"]


def _val_score(val: dict[str, dict], unit: str) -> float:
    return mean_auc(val) if unit == "mean" else val[unit]["auc"]


def _save_best(out: Path, method, config: TrainConfig, names: list[str], improved: list[str],
               best: dict[str, float], best_epochs: dict[str, int], epoch: int) -> None:
    """Write best.pt; per-site selection keeps the other sites' networks from their own best epochs."""
    state = method.state_dict()
    if improved != ["mean"] and (out / run_folder.BEST).exists():
        kept = load_checkpoint(out / run_folder.BEST, expect_method=method.name)["model"]
        for site in set(names) - set(improved):
            prefix = method.site_state_prefix(names.index(site))
            state.update({k: v for k, v in kept.items() if k.startswith(prefix)})
    scores = [v for v in best.values() if not math.isnan(v)]
    save_checkpoint(out / run_folder.BEST, method, config, names, model=state, epoch=epoch,
                    site_epochs=dict(best_epochs),
                    val_mean_auc=float(np.mean(scores)) if scores else float("nan"))


def write_tail_predictions(path: Path, epoch: int, rows: list[dict]) -> None:
    """Add this epoch's test predictions, replacing any of this or later epochs (a resumed epoch)."""
    kept = []
    if path.exists():
        kept = [r for r in run_folder.read_predictions(path) if int(r["epoch"]) < epoch]
    run_folder.write_predictions(path, kept + [{"epoch": epoch, **r} for r in rows])


def check_run_folder(out: Path, resume: bool) -> bool:
    """Refuse to overwrite a run (called before anything is written); return whether `out` holds one to resume.

    --resume of a folder without config.yaml but with other run files is refused too: its settings cannot be
    checked, and starting over would overwrite them. An empty or missing folder starts afresh.
    """
    if out.exists() and not out.is_dir():
        raise CrossSiteError(f"{out}: --out names a file, not a run folder")
    held = [name for name in run_folder.FILES if (out / name).exists()]
    if not held:
        return False
    if not resume:
        raise CrossSiteError(f"{out}: holds a run already ({', '.join(held)}); pass --resume to continue it "
                             "or choose another --out")
    if run_folder.CONFIG not in held:
        raise CrossSiteError(f"{out}: cannot --resume without its config.yaml (the folder holds {', '.join(held)}); "
                             "choose another --out")
    return True


def _resume_state(out: Path, method, scheduler) -> tuple[int, dict[str, float], dict[str, int]]:
    """Load last.pt (if one was saved) into the method; drop log lines of epochs it does not hold."""
    epoch, best, best_epochs = 0, {}, {}
    last = out / run_folder.LAST
    if last.exists():
        ckpt = load_checkpoint(last, expect_method=method.name)
        method.load_state_dict(ckpt["model"])
        method.optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        epoch, best, best_epochs = int(ckpt["epoch"]), dict(ckpt["best_val_auc"]), dict(ckpt["best_epochs"])
    log = out / run_folder.TRAIN_LOG
    if log.exists():
        kept = [r for r in read_jsonl(log) if r["epoch"] <= epoch]
        atomic_write_text(log, "".join(json.dumps(r) + "\n" for r in kept))
    return epoch, best, best_epochs


def _stop_if_diverged(method, out: Path, first_epoch: int, steps_per_epoch: int) -> None:
    """Raise DivergedError if an update since this process started had a non-finite loss or gradient
    (its step and every later one left the weights alone, crosssite.methods.base); reads the device."""
    found = method.divergence()
    if found is None:
        return
    at, loss = found
    epoch, step = first_epoch + (at - 1) // steps_per_epoch + 1, (at - 1) % steps_per_epoch + 1
    what = f"loss became {loss}" if not math.isfinite(loss) else f"gradient norm became non-finite (loss {loss})"
    kept = f"last good checkpoint: {out / 'last.pt'}" if (out / run_folder.LAST).exists() else "no checkpoint yet"
    raise DivergedError(f"{out}: {what} at epoch {epoch}, step {step}; training stopped ({kept})")


def train(config: TrainConfig, resume: bool = False, progress: bool = True, device: str = "auto") -> dict:
    """Train `config.method` on the sites, keep the best validation checkpoint, test it; return metrics.json."""
    config.validate()
    check_method(config.method, config.backbone)
    # a bad --device, or bf16 where there is no GPU, fails before anything is written
    distributed.check_precision(config.precision, distributed.device(device))
    out = Path(config.out)
    resume = check_run_folder(out, resume)  # False: nothing saved yet (or killed before anything was): start afresh
    # torchrun (crosssite.distributed): every rank has looked at the run folder before rank 0 writes to it;
    # only rank 0 writes files and shows progress
    distributed.barrier()
    progress = progress and distributed.is_main()
    if resume:
        check_same_settings(config, out / run_folder.CONFIG)
        if (done := run_folder.read_metrics(out)) is not None:
            read_jsonl(out / run_folder.TRAIN_LOG)  # a damaged line is noticed, not passed over
            return done  # a finished run: nothing to continue, nothing changes

    data = prepare_data(config, out, resume, progress)
    if not resume:
        save_config(config, out / run_folder.CONFIG)
    if not (out / run_folder.SPLIT).exists():
        settings = {k: getattr(config, k) for k in ("split", "fold", "folds", "seed", "group_duplicates")}
        save_splits(out / run_folder.SPLIT, data.sites, data.splits, settings=settings)
    seed_everything(config.seed)
    method = create_method(config.method, len(data.sites), config)
    update = distributed.make_update(method, device)  # channels_last; under torchrun: this rank's share, DDP
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(method.optimizer, T_max=config.epochs, eta_min=0.0)
    start_epoch, best, best_epochs = _resume_state(out, method, scheduler) if resume else (0, {}, {})
    events = open_events(out, config.tensorboard)  # replays the (resume-trimmed) log first

    names = data.site_names
    units = selection_units(method, names)
    train_sizes = [len(data.splits[n]["train"]) for n in names]
    pacing = SavePacing(config.save_every)
    for epoch in range(start_epoch, config.epochs):
        # every random draw of an epoch follows from (seed, epoch): a resumed run repeats it exactly
        rng = np.random.default_rng([config.seed, epoch])
        torch.manual_seed(config.seed * 1_000_003 + epoch)
        started = time.time()
        lr = method.optimizer.param_groups[0]["lr"]
        method.train()
        totals: dict[str, float] = {}
        batches = epoch_batches(train_sizes, config.batch_per_site, rng)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False)
        for step, indices in enumerate(bar):
            # made on the host while the device still runs the previous steps: nothing here waits for it
            minibatches = [train_batch(data, n, idx, config.image_size, rng) for n, idx in zip(names, indices)]
            stats = update(minibatches)
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + v
            if (step + 1) % READ_EVERY == 0 or step + 1 == len(batches):
                _stop_if_diverged(method, out, start_epoch, len(batches))
                bar.set_postfix(loss=f"{float(totals['loss']) / (step + 1):.4f}")
        scheduler.step()

        val, _ = evaluate_part(method, data, "val", config.eval_batch_size)
        val_auc = mean_auc(val)
        improved = [u for u in units if not math.isnan(_val_score(val, u)) and _val_score(val, u) > best.get(u, -math.inf)]
        is_best = bool(improved)
        record = {
            "epoch": epoch + 1,
            "lr": lr,
            **{k: float(v) / len(batches) for k, v in totals.items()},
            "val_mean_auc": val_auc,
            "val": val,
            "best": is_best,
            "seconds": round(time.time() - started, 2),
        }
        append_jsonl(out / run_folder.TRAIN_LOG, record)
        events.add_epoch(record)
        if progress:
            tqdm.write(
                f"epoch {epoch + 1}/{config.epochs}  loss {record['loss']:.4f}  val AUC "
                + "  ".join(f"{n} {val[n]['auc']:.3f}" for n in names)
                + ("  *best" if is_best else "")
            )
        if is_best:
            best.update({u: _val_score(val, u) for u in improved})
            best_epochs.update({u: epoch + 1 for u in improved})
            _save_best(out, method, config, names, improved, best, best_epochs, epoch + 1)
        if epoch >= config.epochs - config.tail_epochs:
            _, test_rows = evaluate_part(method, data, "test", config.eval_batch_size)  # every rank takes part
            write_tail_predictions(out / run_folder.TAIL_PREDICTIONS, epoch + 1, test_rows)
        if pacing.due(epoch + 1, config.epochs, time.time() - started):
            writing = time.time()
            save_checkpoint(
                out / run_folder.LAST,
                method,
                config,
                names,
                epoch=epoch + 1,
                best_val_auc=best,
                best_epochs=best_epochs,
                optimizer=method.optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
            )
            pacing.written(time.time() - writing)

    if not (out / run_folder.BEST).exists():  # validation AUC undefined every epoch: fall back to the last epoch
        save_checkpoint(out / run_folder.BEST, method, config, names, epoch=config.epochs, site_epochs={},
                        val_mean_auc=float("nan"))
    distributed.barrier()  # torchrun: rank 0 has written best.pt
    decisions.fit_run(out / run_folder.BEST, data, config.eval_batch_size, device)  # calibration etc., on validation
    metrics = test_best(config, data, out, device)
    events.add_test(metrics)
    events.close()
    return metrics


def test_best(config: TrainConfig, data: RunData, out: Path, device: str = "auto") -> dict:
    """Evaluate best.pt on the test part and write metrics.json and predictions.csv."""
    trained = load_trained(out / run_folder.BEST, device, expect_method=config.method)
    best = trained.payload
    per_site, rows = evaluate_part(trained.method, data, "test", config.eval_batch_size)
    metrics = {
        "method": config.method,
        "backbone": config.backbone,
        "split": config.split,
        "fold": config.fold,
        "seed": config.seed,
        "best_epoch": int(best["epoch"]),
        "site_best_epochs": dict(best.get("site_epochs", {})),
        "val_mean_auc": float(best["val_mean_auc"]),
        "sites": per_site,
        "tail_auc": tail_auc(out / run_folder.TAIL_PREDICTIONS),
        "aggregate": describe(),  # level_metrics' default: how slices become a scan's or a patient's P(COVID) in the next two
        **{f"{level}s": by_site for level, by_site in level_metrics(rows).items()},
    }
    run_folder.write_predictions(out / run_folder.PREDICTIONS, rows)
    run_folder.write_metrics(out, metrics)  # last: it marks the run finished
    return metrics


def tail_auc(path: Path) -> dict[str, dict[str, float]]:
    """Per site, the test AUC of each epoch in tail_predictions.csv ({} if there is none)."""
    if not path.exists():
        return {}
    by_site = {}
    for r in run_folder.read_predictions(path):
        by_site.setdefault(r["site"], {}).setdefault(r["epoch"], ([], []))
        labels, probs = by_site[r["site"]][r["epoch"]]
        labels.append(int(r["label"]))
        probs.append(float(r["p_covid"]))
    return {site: {epoch: site_metrics(np.array(y), np.array(p))["auc"] for epoch, (y, p) in epochs.items()}
            for site, epochs in by_site.items()}

