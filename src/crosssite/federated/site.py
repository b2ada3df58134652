"""One hospital of a federation: trains on its own images only and keeps everything site-specific at home.

A site trains the method built for one site (`num_sites=1`), so its folder OUT/SITE is an ordinary
one-site run folder: config.yaml (its own data only), split.json (the same fold as a centralised run of
the same seed: splits are made per site), train_log.jsonl (one line per round), best.pt (the averaged
weights of the round with this site's best validation AUC, with its own batch norms, and the calibration,
operating point and OOD threshold fitted on its validation part as train fits them), decisions.json,
metrics.json and predictions.csv (its test part); evaluate, predict, export, card and adapt use it unchanged. last.pt holds
what a killed site resumes from: the model after its last finished step of a round (`phase` "fit": trained,
not yet validated; "done": validated), its Adam state, its best validation AUC, and its last reply. Asked
again for a step it has finished, a site answers from last.pt, so a resumed federation repeats nothing.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from pathlib import Path

import numpy as np
import torch

from .. import decisions, distributed, run_folder
from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import TrainConfig, save_config
from ..data.sampling import epoch_batches
from ..data.splits import save_splits
from ..errors import CrossSiteError, DivergedError
from ..evaluate import evaluate_part
from ..io import append_jsonl, atomic_write_text, read_jsonl
from ..methods import METHODS, check_method
from ..metrics import confusion_counts
from ..train import (READ_EVERY, check_run_folder, check_same_settings, prepare_data, seed_everything, test_best,
                     train_batch, write_tail_predictions)
from .contrast import FederatedContrastive
from .messages import EvaluateIns, EvaluateRes, FitIns, FitRes
from .settings import FedSettings
from .state import for_transfer, load_shared, shared_state

#: a method's form at one site of a federation, where it differs from the registered class
FEDERATED_FORMS = {"contrastive": FederatedContrastive}


def build_method(config: TrainConfig):
    """The method for one site, as every site and the coordinator build it (same seed: same weights)."""
    check_method(config.method, config.backbone)
    seed_everything(config.seed)
    return FEDERATED_FORMS.get(config.method, METHODS[config.method])(1, config)


def site_config(config: TrainConfig, name: str, root: Path, out: Path) -> TrainConfig:
    """The federation's settings as one site runs them: only its own data, its own folder."""
    return config.replace(data=None, sites=[f"{name}={root}"], out=str(out))


def round_lr(base: float, round: int, rounds: int) -> float:
    """The cosine schedule over rounds (CosineAnnealingLR to 0 at `rounds`): round 1 trains at `base`."""
    return base * (1 + math.cos(math.pi * (round - 1) / rounds)) / 2


def site_key(name: str) -> int:
    """A number for the site's name: its random draws follow from (seed, round, name), whoever else takes part."""
    return zlib.crc32(name.encode())


class SiteTrainer:
    """A site's side of every message: `fit`, `evaluate`, `finish` (crosssite.federated.messages)."""

    def __init__(self, config: TrainConfig, settings: FedSettings, resume: bool = False, device: str = "cpu",
                 progress: bool = False, keep_decoded: bool = False):
        config.validate()
        check_method(config.method, config.backbone)
        self.config, self.settings, self.out = config, settings, Path(config.out)
        resume = check_run_folder(self.out, resume)
        if resume:
            check_same_settings(config, self.out / run_folder.CONFIG)
        self.data = prepare_data(config, self.out, resume, progress, keep_decoded)
        if len(self.data.sites) != 1:
            raise CrossSiteError(f"{self.out}: a federated site trains on exactly one site, got "
                                 f"{', '.join(self.data.site_names)}")
        self.name = self.data.site_names[0]
        if not resume:
            save_config(config, self.out / run_folder.CONFIG)
        if not (self.out / run_folder.SPLIT).exists():
            settings_ = {k: getattr(config, k) for k in ("split", "fold", "folds", "seed", "group_duplicates")}
            save_splits(self.out / run_folder.SPLIT, self.data.sites, self.data.splits, settings=settings_)
        self.method = build_method(config)
        self.update = distributed.make_update(self.method, device)
        self.device = device
        self.round, self.phase, self.best = 0, "done", -math.inf
        self.stats: dict[str, float] = {}
        self.extras: dict[str, torch.Tensor] = {}
        self.val_auc = math.nan
        if (self.out / run_folder.LAST).exists():
            self._load()
        log = self.out / run_folder.TRAIN_LOG
        if log.exists():  # lines of rounds last.pt does not hold as validated are written again
            done = self.round if self.phase == "done" else self.round - 1
            kept = [r for r in read_jsonl(log) if r["round"] <= done]
            atomic_write_text(log, "".join(json.dumps(r) + "\n" for r in kept))

    @property
    def num_examples(self) -> int:
        return len(self.data.splits[self.name]["train"])

    def fit(self, ins: FitIns) -> FitRes:
        """Local training of round `ins.round` from the global shared state; the reply carries no site-specific
        tensor and nothing per image."""
        if (self.round, self.phase) == (ins.round, "fit"):
            return self._fit_result()  # trained before a restart: the same reply
        if ins.round <= self.round:
            raise CrossSiteError(f"{self.out}: asked to train round {ins.round}, but round {self.round} is done")
        load_shared(self.method, ins.shared)
        if isinstance(self.method, FederatedContrastive):
            self.method.peers = dict(ins.peers)
        if not self.settings.keep_optimizer:
            self.method.optimizer.state.clear()
        lr = round_lr(self.config.lr, ins.round, self.settings.rounds)
        for group in self.method.optimizer.param_groups:
            group["lr"] = lr
        rng = np.random.default_rng([self.config.seed, ins.round, site_key(self.name)])
        torch.manual_seed(self.config.seed * 1_000_003 + ins.round)
        self.method.train()
        started = time.time()
        batches = self.round_batches(rng)
        totals: dict[str, torch.Tensor] = {}
        for step, indices in enumerate(batches):
            minibatch = train_batch(self.data, self.name, indices, self.config.image_size, rng)
            for k, v in self.update([minibatch]).items():
                totals[k] = totals.get(k, 0.0) + v
            if (step + 1) % READ_EVERY == 0 or step + 1 == len(batches):
                self._stop_if_diverged(ins.round)
        self.stats = {"lr": lr, **{k: float(v) / len(batches) for k, v in totals.items()},
                      "steps": len(batches), "seconds": round(time.time() - started, 2)}
        self.extras = self.method.class_means() if isinstance(self.method, FederatedContrastive) else {}
        self.round, self.phase = ins.round, "fit"
        self._save()
        return self._fit_result()

    def round_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        """The round's batches of training indices: `epochs_per_round` passes over the site's images
        (the last batch of a pass topped up from a fresh permutation), or `steps_per_round` steps."""
        n, size = self.num_examples, self.config.batch_per_site
        wanted = self.settings.steps_per_round or self.settings.epochs_per_round * math.ceil(n / size)
        batches: list[np.ndarray] = []
        while len(batches) < wanted:
            batches += [step[0] for step in epoch_batches([n], size, rng)]
        return batches[:wanted]

    def evaluate(self, ins: EvaluateIns) -> EvaluateRes:
        """Validate the averaged state of round `ins.round` with this site's own site-specific part; keep
        best.pt on this site's validation AUC; only metrics go back."""
        if self.phase == "done" and self.round >= ins.round:
            return EvaluateRes(self.name, ins.round, {"val_auc": self.val_auc})
        trained = (self.round, self.phase) == (ins.round, "fit")
        load_shared(self.method, ins.shared)
        val, _ = evaluate_part(self.method, self.data, "val", self.config.eval_batch_size)
        self.val_auc = auc = val[self.name]["auc"]
        is_best = not math.isnan(auc) and auc > self.best
        if is_best:
            self.best = auc
            save_checkpoint(self.out / run_folder.BEST, self.method, self.config, [self.name], epoch=ins.round,
                            site_epochs={self.name: ins.round}, val_mean_auc=auc)
        record = {"epoch": ins.round, "round": ins.round, "trained": trained, **(self.stats if trained else {}),
                  "val_mean_auc": auc, "val": val, "best": is_best}
        append_jsonl(self.out / run_folder.TRAIN_LOG, record)
        if ins.round > self.settings.rounds - self.config.tail_epochs:
            _, rows = evaluate_part(self.method, self.data, "test", self.config.eval_batch_size)
            write_tail_predictions(self.out / run_folder.TAIL_PREDICTIONS, ins.round, rows)
        self.round, self.phase = ins.round, "done"
        self._save()
        return EvaluateRes(self.name, ins.round, {"val_auc": auc})

    def finish(self) -> EvaluateRes:
        """Test best.pt on this site's test part (metrics.json, predictions.csv); only the metrics go back,
        with the test part's confusion counts (four numbers: the coordinator pools them over sites)."""
        metrics = run_folder.read_metrics(self.out)
        if metrics is None:
            if not (self.out / run_folder.BEST).exists():  # validation AUC undefined every round: the last round
                save_checkpoint(self.out / run_folder.BEST, self.method, self.config, [self.name], epoch=self.round,
                                site_epochs={}, val_mean_auc=float("nan"))
            # calibration, operating point and OOD threshold on this site's validation part, as train does
            decisions.fit_run(self.out / run_folder.BEST, self.data, self.config.eval_batch_size, self.device)
            metrics = test_best(self.config, self.data, self.out, self.device)
        rows = run_folder.read_predictions(self.out / run_folder.PREDICTIONS)
        counts = confusion_counts([int(r["label"]) for r in rows], [float(r["p_covid"]) for r in rows])
        return EvaluateRes(self.name, self.round, {**metrics["sites"][self.name], **counts})

    def _fit_result(self) -> FitRes:
        return FitRes(self.name, self.round, for_transfer(shared_state(self.method), self.settings.transfer),
                      self.num_examples, dict(self.stats),
                      dict(self.extras))

    def _stop_if_diverged(self, round: int) -> None:
        if (found := self.method.divergence()) is not None:
            raise DivergedError(f"{self.out}: loss became {found[1]} in round {round}; training stopped "
                                f"(last finished round in {self.out / 'last.pt'})")

    def _save(self) -> None:
        save_checkpoint(self.out / run_folder.LAST, self.method, self.config, [self.name], epoch=self.round,
                        round=self.round, phase=self.phase, best_val_auc=self.best, val_auc=self.val_auc,
                        optimizer=self.method.optimizer.state_dict(), fit_stats=self.stats, fit_extras=self.extras)

    def _load(self) -> None:
        saved = load_checkpoint(self.out / run_folder.LAST, expect_method=self.config.method)
        self.method.load_state_dict(saved["model"])
        self.method.optimizer.load_state_dict(saved["optimizer"])
        self.round, self.phase, self.best = int(saved["round"]), saved["phase"], float(saved["best_val_auc"])
        self.val_auc, self.stats, self.extras = float(saved["val_auc"]), saved["fit_stats"], saved["fit_extras"]
