"""Correctness checks that need the training device, for benchmarks/gpu_check.sh (one JSON line each).

    python benchmarks/gpu_check.py --device cuda --out OUT/check.jsonl
    python benchmarks/gpu_check.py --device cpu --size 32 --width 0.125    # a dry run of the same code

  single_pass  one pass for all sites against one pass per site (outputs, gradients, running
               statistics), on the device's layers (torch's own on a GPU); then again with TF32 off
               for convolutions and matrix products (on a CPU the same check twice);
  captured     STEPS training steps through make_update with the CUDA graph against the same steps
               eager (losses, final weights), with the learning rate changed half-way as the cosine
               schedule does; on a CPU both sides are eager;
  bf16         a few eager and captured steps under --precision bf16 stay finite (GPU only);
  save         seconds to write last.pt (weights + Adam state) at the paper's width, for --save-every.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from crosssite.capture import CapturedUpdate  # noqa: E402
from crosssite.checkpoint import save_checkpoint  # noqa: E402
from crosssite.config import TrainConfig  # noqa: E402
from crosssite.distributed import make_update  # noqa: E402
from crosssite.methods import create_method  # noqa: E402
from crosssite.models.site_bn import use_site  # noqa: E402
from crosssite.runtime import prepare_model  # noqa: E402

STEPS = 8


def _method(name: str, args, **settings):
    torch.manual_seed(0)
    return create_method(name, 2, TrainConfig(method=name, image_size=args.size, width=args.width, **settings))


def _batches(args, step: int, uint8: bool = True):
    g = torch.Generator().manual_seed(step)
    n = args.batch_per_site
    if uint8:
        return [(torch.randint(0, 256, (n, args.size, args.size), dtype=torch.uint8, generator=g),
                 torch.tensor([0, 1] * (n // 2))) for _ in range(2)]
    return [(torch.randn(n, 3, args.size, args.size, generator=g) * (site + 1) + site, torch.tensor([0, 1] * (n // 2)))
            for site in range(2)]


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


def check_single_pass_tf32_off(args) -> dict:
    """The single-pass check with cuDNN's and cuBLAS's TF32 off: was the CUDA difference TF32 rounding?"""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return check_single_pass(args) | {"check": "single_pass_tf32_off"}
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def check_single_pass(args) -> dict:
    results = {}
    for name in ("contrastive", "sepnorm", "ms-net", "series-adapter"):
        minibatches = [(x.to(args.device), y.to(args.device)) for x, y in _batches(args, 0, uint8=False)]
        per_site, single = _method(name, args), _method(name, args)
        for method in (per_site, single):
            prepare_model(method, args.device).train()

        def heads(net):
            return [net.classify] + ([net.project] if net.has_projection else []) + (
                [net.aux_classifier] if hasattr(net, "aux_classifier") else [])

        parts = []
        for site, (x, _) in enumerate(minibatches):
            with use_site(per_site.net, site):
                emb = per_site.net.features(x)
                parts.append([emb] + [h(emb) for h in heads(per_site.net)])
        ref = [torch.cat(p) for p in zip(*parts)]
        with single.all_sites(minibatches) as (x, _):
            emb = single.net.features(x)
            got = [emb] + [h(emb) for h in heads(single.net)]
        g = torch.Generator().manual_seed(3)
        weights = [torch.randn(o.shape, generator=g).to(args.device) for o in ref]
        sum((o * w).sum() for o, w in zip(ref, weights)).backward()
        sum((o * w).sum() for o, w in zip(got, weights)).backward()
        out_rel = max(_max_rel(a, b) for a, b in zip(got, ref))
        # relative to the largest gradient: a bias just before a batch norm has a gradient of zero up to rounding
        pairs = [(p.grad, q.grad) for p, q in zip(single.parameters(), per_site.parameters()) if q.grad is not None]
        grad_rel = max(float((a - b).abs().max()) for a, b in pairs) / max(float(b.abs().max()) for _, b in pairs)
        buf_rel = max(_max_rel(a.float(), b.float()) for a, b in zip(single.buffers(), per_site.buffers()))
        results[name] = {"outputs_max_rel": out_rel, "grads_max_rel": grad_rel, "buffers_max_rel": buf_rel,
                         "ok": out_rel < 1e-3 and grad_rel < 1e-2 and buf_rel < 1e-3}
    return {"check": "single_pass", "ok": all(r["ok"] for r in results.values()), **results}


def _run_steps(method, update, args):
    losses = []
    for step in range(STEPS):
        if step == STEPS // 2:  # what the cosine schedule does between epochs
            for group in method.optimizer.param_groups:
                group["lr"] *= 0.5
        losses.append(float(update(_batches(args, step))["loss"]))
    return losses


def check_captured(args, precision: str = "fp32") -> dict:
    eager_method = _method("contrastive", args, cuda_graphs=False, precision=precision, lr=1e-3)
    graph_method = _method("contrastive", args, cuda_graphs=True, precision=precision, lr=1e-3)
    eager_update, graph_update = make_update(eager_method, args.device), make_update(graph_method, args.device)
    started = time.perf_counter()
    eager = _run_steps(eager_method, eager_update, args)
    graph = _run_steps(graph_method, graph_update, args)
    captured = isinstance(graph_update, CapturedUpdate) and graph_update.graph is not None
    loss_rel = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(graph, eager))
    weight_rel = max(_max_rel(p.detach(), q.detach())
                     for p, q in zip(graph_method.parameters(), eager_method.parameters()))
    finite = all(map(lambda v: v == v and abs(v) != float("inf"), eager + graph))
    tolerance = 1e-3 if precision == "fp32" else 5e-2
    return {"check": f"captured_{precision}", "captured": captured, "eager_losses": eager, "captured_losses": graph,
            "loss_max_rel": loss_rel, "weights_max_rel": weight_rel, "finite": finite,
            "seconds": round(time.perf_counter() - started, 2),
            "ok": finite and loss_rel < tolerance and (captured or args.device == "cpu")}


def check_save(args) -> dict:
    method = _method("contrastive", args)
    update = make_update(method, args.device)
    update(_batches(args, 0))  # Adam's state exists, as in last.pt
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        save_checkpoint(Path(folder) / "last.pt", method, method.config, ["a", "b"], epoch=1,
                        optimizer=method.optimizer.state_dict())
        seconds = time.perf_counter() - started
        size = (Path(folder) / "last.pt").stat().st_size
    return {"check": "save_last_pt", "seconds": round(seconds, 3), "mb": round(size / 1e6, 1),
            "width": args.width, "ok": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch-per-site", type=int, default=16)
    parser.add_argument("--out", help="append the JSON lines to this file too")
    args = parser.parse_args()
    checks = [check_single_pass, check_single_pass_tf32_off, check_captured, check_save]
    if args.device != "cpu":
        checks.insert(2, lambda a: check_captured(a, "bf16"))
    failed = 0
    for check in checks:
        started = time.perf_counter()
        try:
            result = check(args)
        except Exception as e:  # one failing check does not hide the others
            result = {"check": getattr(check, "__name__", "check"), "ok": False, "error": f"{type(e).__name__}: {e}"}
        result["wall_s"] = round(time.perf_counter() - started, 2)
        failed += not result["ok"]
        line = json.dumps(result)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
