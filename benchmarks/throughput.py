"""Training and inference throughput of crosssite ("ours") against a plain PyTorch loop ("plain").

    python benchmarks/throughput.py                       # 224, 112 and 64 px, then one real epoch
    python benchmarks/throughput.py --sizes 64,112 --json rows.jsonl --no-epoch
    python benchmarks/throughput.py --device cuda --sizes 224,112 --no-epoch   # plain, ours-eager, ours
    python benchmarks/throughput.py --sizes 224 --infer-only --onnxruntime --no-epoch   # + onnxruntime (CPU)

Both sides train the paper's setting: the redesigned COVID-Net with site-specific batch norm, one
forward per site, batch 32 (16 + 16), cross-entropy + supervised NT-Xent, Adam, gradient clipping;
both build the network with crosssite's model and loss code, so they differ only in how they run:

  plain  eager fp32, NCHW, torch's own layers (crosssite.models.layers.as_torch_layers), one forward
         per site, torch.optim.Adam as it comes, float batches moved to the device in the step, the
         loss read back every step, the process as Python starts it (glibc's default malloc settings);
         inference runs the training network in eval mode.
  ours   what crosssite itself runs: the method's update through crosssite.distributed.make_update
         (one pass for all sites, fused Adam, uint8 crops normalised on the device; on a CPU
         channels_last and crosssite's layers, on a GPU torch's layers and the step replayed as a CUDA
         graph), inference through crosssite.inference (batch norm folded), in a process with the
         malloc tunables that `crosssite` sets for itself (crosssite.runtime).
  ours-eager  (--device cuda only) ours without the CUDA graph (--no-cuda-graphs).
  onnxruntime  (--onnxruntime, CPU only, needs the [onnx] extra) inference only: ours' folded network
         of site 0 written by crosssite.export as `crosssite export` writes it and run by onnxruntime's
         CPU provider on the same number of threads, in a process as Python starts it (as plain).

--infer-only skips the training steps (and the epoch): every row then has inference columns only.

`ops_per_step` is the number of ATen operations one training step dispatches (crosssite.opcount),
after warm-up: what bounds a GPU step at this batch size (issue 11). A replayed CUDA graph dispatches
only its input copies and the replay.

Every measurement runs in a fresh child process (the malloc tunables must be set before Python
starts); the two sides alternate, plain-ours then ours-plain, and each reports the median over
all its timed steps after warm-up (on a GPU: the mean of a synchronised run of them). FLOPs are counted with torch.utils.flop_counter (convolutions and
matrix products; a training step counts forward and backward; the convolutions' backward with a
corrected formula, see `_conv_backward_flop`), and the percentage is of the fp32 matmul rate measured
in this run by a large torch.mm on the same number of threads. Peak RSS is
the child's maximum resident memory (training steps, then inference). FLOPs per step and batch
are counted on plain's run: the same network and math on every side, and neither a replayed CUDA
graph nor onnxruntime dispatches anything torch's counter sees.

The epoch row trains one real epoch with `crosssite.train.train` (../shared/data when present,
else the shipped sample) and reports its wall time and the share spent making batches.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
BATCH_PER_SITE = 16
MATMUL_SIZE = 6144  # large enough for MKL's sgemm to reach its top rate (2048 gives ~13 % less here)


# ---------------------------------------------------------------- child processes


def _images(size: int, step: int, uint8: bool):
    """One step's minibatches on the host: 16 uint8 crops per site (as crosssite.train makes them) or
    those crops normalised to float (what a plain loop hands its network), labels of both classes."""
    import numpy as np
    import torch

    from crosssite.data.transforms import to_tensor

    rng = np.random.default_rng(step)
    crops = [rng.integers(0, 256, (BATCH_PER_SITE, size, size), dtype=np.uint8) for _ in range(2)]
    labels = torch.tensor([0, 1] * (BATCH_PER_SITE // 2))
    return [(torch.from_numpy(c) if uint8 else to_tensor(c), labels) for c in crops]


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _plain(size: int, width: float, device: str):
    """The straightforward loop: (train step, inference batch) on the same network and loss."""
    import torch
    import torch.nn.functional as F

    from crosssite.config import TrainConfig
    from crosssite.losses import supervised_nt_xent
    from crosssite.models import convert_to_site_bn, create_model, use_site
    from crosssite.models.layers import as_torch_layers

    c = TrainConfig(image_size=size, width=width)
    torch.manual_seed(0)
    net = create_model("covidnet-redesign", width=width, image_size=size, projection=True)
    net = convert_to_site_bn(as_torch_layers(net), 2).to(device)  # nn.Conv2d, nn.ReLU, nn.MaxPool2d
    opt = torch.optim.Adam(net.parameters(), lr=c.lr, weight_decay=c.weight_decay)

    def train_step(minibatches):
        net.train()
        logits, projections = [], []
        for site, (x, _) in enumerate(minibatches):
            with use_site(net, site):
                emb = net.features(x.to(device))
                logits.append(net.classify(emb))
                projections.append(net.project(emb))
        y = torch.cat([y for _, y in minibatches]).to(device)
        ce = F.cross_entropy(torch.cat(logits), y)
        loss = ce + c.alpha * supervised_nt_xent(torch.cat(projections), y, c.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), c.grad_clip)
        opt.step()
        return loss.item()

    def make_predictor():
        net.eval()

        @torch.no_grad()
        def predict(x):
            with use_site(net, 0):
                return net(x.to(device))
        return predict

    return train_step, make_predictor, False


def _ours(size: int, width: float, device: str, cuda_graphs: bool = True):
    """crosssite's own paths: the method's update as the trainer runs it, the predictor of predict_proba."""
    import torch

    from crosssite.config import TrainConfig
    from crosssite.distributed import make_update
    from crosssite.inference import inference_network
    from crosssite.methods import create_method

    torch.manual_seed(0)
    method = create_method("contrastive", 2, TrainConfig(image_size=size, width=width, cuda_graphs=cuda_graphs))
    update = make_update(method, device)

    def train_step(minibatches):
        method.train()
        return update(minibatches)["loss"]  # a tensor on the device: nothing waits for it

    def make_predictor():
        net = inference_network(method, 0)  # what predict_proba builds once per call

        @torch.no_grad()
        def predict(x):
            return net(x)
        return predict

    return train_step, make_predictor, True


def _onnxruntime(size: int, width: float, device: str):
    """ours' folded network of site 0 exported to ONNX and run by onnxruntime: (no train step, inference).
    `device` is always the CPU (the parser refuses --onnxruntime with cuda)."""
    import onnxruntime
    import torch

    from crosssite.config import TrainConfig
    from crosssite.export import export_network
    from crosssite.export_formats import INPUT
    from crosssite.export_formats.onnx_file import write_onnx
    from crosssite.methods import create_method

    torch.manual_seed(0)
    method = create_method("contrastive", 2, TrainConfig(image_size=size, width=width))
    method.eval()

    def make_predictor():
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        with tempfile.TemporaryDirectory() as folder:  # the session holds the model once it is made
            path = Path(folder) / "net.onnx"
            write_onnx(export_network(method, 0)[0], torch.zeros(1, 3, size, size), path)
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def predict(x):
            return session.run(None, {INPUT: x.numpy()})  # all outputs, as `predict --backend onnxruntime`
        return predict

    return None, make_predictor, False


IMPLS = {"plain": _plain, "ours": _ours, "ours-eager": functools.partial(_ours, cuda_graphs=False),
         "onnxruntime": _onnxruntime}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _timed(fn, arg, warmup: int, steps: int, device: str = "cpu") -> list[float]:
    for _ in range(warmup):
        fn(arg)
    if device == "cuda":  # the GPU runs behind the host: time a synchronised run of all steps
        _sync(device)
        started = time.perf_counter()
        for _ in range(steps):
            fn(arg)
        _sync(device)
        return [(time.perf_counter() - started) / steps] * steps
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - started)
    return times


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """A convolution's backward costs its forward once per gradient it computes (input, weight).

    torch.utils.flop_counter's own formula ignores `groups` for the weight gradient and counts a
    depthwise convolution's backward `groups` times over (48x its forward for 48 channels, PyTorch
    2.13), which would inflate a training step's count of this network by ~70 %.
    """
    from torch.utils.flop_counter import conv_flop_count

    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def _flop_counter():
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flop})


def worker_steps(impl: str, size: int, width: float, warmup: int, steps: int, device: str = "cpu",
                 infer_only: bool = False) -> dict:
    import torch

    from crosssite.opcount import count_ops

    train_step, make_predictor, uint8 = IMPLS[impl](size, width, device)
    first_loss, train_times, train_rss, ops_per_step, train_flop = None, [], None, None, None
    if train_step is not None and not infer_only:
        minibatches = _images(size, 0, uint8)
        first_loss = float(train_step(minibatches))  # from the same initial weights everywhere: the same loss
        train_times = _timed(train_step, minibatches, warmup, steps, device)
        train_rss = _peak_rss_mb()
        ops_per_step = count_ops(lambda: train_step(minibatches)).total
        with _flop_counter() as counter:
            train_step(minibatches)
        train_flop = counter.get_total_flops()  # 0 for a replayed CUDA graph: the parent takes plain's

    started = time.perf_counter()
    infer = make_predictor()
    prepare_s = time.perf_counter() - started
    x = torch.cat([x for x, _ in _images(size, 0, uint8=False)]).to(device)
    infer_times = _timed(infer, x, warmup, steps, device)
    with _flop_counter() as counter:
        infer(x)
    return {"train_s": train_times, "infer_s": infer_times, "train_flop": train_flop,
            "infer_flop": counter.get_total_flops(), "infer_prepare_s": prepare_s, "first_loss": first_loss,
            "train_peak_rss_mb": train_rss, "peak_rss_mb": _peak_rss_mb(), "threads": torch.get_num_threads(),
            "ops_per_step": ops_per_step, "device": device}


def worker_matmul(reps: int = 5, device: str = "cpu") -> dict:
    import torch

    a, b = (torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device) for _ in range(2))
    times = _timed(lambda _: torch.mm(a, b), None, 2, reps, device)
    return {"gflop_s": 2 * MATMUL_SIZE ** 3 / statistics.median(times) / 1e9, "threads": torch.get_num_threads()}


def worker_epoch(data: str, size: int, width: float, device: str = "cpu") -> dict:
    """One real epoch with crosssite's trainer, timing its data functions from outside."""
    from crosssite import train as train_module
    from crosssite.config import TrainConfig
    from crosssite.io import read_jsonl

    seconds = {"prepare_data": [], "train_batch": []}

    def timed(name):
        real = getattr(train_module, name)

        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            result = real(*args, **kwargs)
            seconds[name].append(time.perf_counter() - started)
            return result
        setattr(train_module, name, wrapper)

    for name in seconds:
        timed(name)
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(method="contrastive", data=data, epochs=1, image_size=size, width=width, out=out)
        train_module.train(config, progress=False, device=device)
        epoch = read_jsonl(Path(out) / "train_log.jsonl")[0]
    batch_s = sum(seconds["train_batch"])
    return {"data": data, "image_size": size, "width": width, "decode_s": sum(seconds["prepare_data"]),
            "epoch_s": epoch["seconds"], "steps": len(seconds["train_batch"]) // 2,  # one batch per site and step
            "batch_s": batch_s, "data_share": batch_s / epoch["seconds"]}


# ---------------------------------------------------------------- the parent: alternate, collect, print


def _child_env(impl: str) -> dict:
    from crosssite.runtime import MARKER, tuned_environment

    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", MARKER)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    return (tuned_environment(env) or env) if impl.startswith("ours") else env  # or env: the user opted out


def _run_child(impl: str, *args: str) -> dict:
    command = [sys.executable, __file__, "--worker", *args]
    done = subprocess.run(command, env=_child_env(impl), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"benchmark child {' '.join(args)} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _row(impl: str, size: int, runs: list[dict], peak: float, plain: list[dict]) -> dict:
    """One row; FLOPs per step and batch are plain's (the same network and math; a replayed graph and
    onnxruntime count none). A row without training steps has None in its training fields."""
    trained = bool(runs[0]["train_s"])
    train_s = statistics.median(t for r in runs for t in r["train_s"]) if trained else None
    infer_s = statistics.median(t for r in runs for t in r["infer_s"])
    images = 2 * BATCH_PER_SITE
    train_flop, infer_flop = plain[0]["train_flop"], plain[0]["infer_flop"]
    train_gflop_s = train_flop / train_s / 1e9 if trained else None
    infer_gflop_s = infer_flop / infer_s / 1e9
    return {
        "impl": impl, "image_size": size, "batch": images, "threads": runs[0]["threads"],
        "train_img_s": images / train_s if trained else None, "infer_img_s": images / infer_s,
        "gflop_s": train_gflop_s, "pct_of_matmul_peak": 100 * train_gflop_s / peak if trained else None,
        "infer_gflop_s": infer_gflop_s, "infer_pct_of_matmul_peak": 100 * infer_gflop_s / peak,
        "train_step_gflop": train_flop / 1e9 if trained else None, "ops_per_step": runs[0]["ops_per_step"], "device": runs[0]["device"], "infer_batch_gflop": infer_flop / 1e9,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "train_peak_rss_mb": max(r["train_peak_rss_mb"] for r in runs) if trained else None,
        "infer_prepare_s": statistics.median(r["infer_prepare_s"] for r in runs),
        "first_loss": runs[0]["first_loss"], "matmul_peak_gflop_s": peak,
        "timed_steps": sum(len(r["train_s"]) for r in runs),
    }


def _table(rows: list[dict], peak: float, width: float, impls: tuple[str, ...]) -> str:
    """The rows as text; "-" where a row has no training steps."""
    threads, device = rows[0]["threads"], rows[0]["device"]
    label = 2 + max(len(f"{impl}/plain") for impl in impls)  # the impl column fits every ratio label
    lines = [
        f"covidnet-redesign, width {width}, site-specific BN + NT-Xent, batch 32 (16+16), fp32, {device}, "
        f"{threads} CPU thread(s)",
        f"fp32 matmul peak (torch.mm {MATMUL_SIZE}x{MATMUL_SIZE} on {device}): {peak:.1f} GFLOP/s",
        "",
        f"{'size':>4}  {'impl':<{label}}{'train img/s':>12}{'GFLOP/s':>9}{'% peak':>8}"
        f"{'infer img/s':>13}{'GFLOP/s':>9}{'% peak':>8}{'peak RSS MB':>13}{'step-1 loss':>13}{'ops/step':>10}",
    ]
    for size in dict.fromkeys(r["image_size"] for r in rows):
        by = {r["impl"]: r for r in rows if r["image_size"] == size}
        for impl in impls:
            r = by[impl]
            if r["train_img_s"] is None:
                train, loss, ops = f"{'-':>12}{'-':>9}{'-':>8}", f"{'-':>13}", f"{'-':>10}"
            else:
                train = f"{r['train_img_s']:>12.2f}{r['gflop_s']:>9.1f}{r['pct_of_matmul_peak']:>7.1f}%"
                loss, ops = f"{r['first_loss']:>13.5f}", f"{r['ops_per_step']:>10}"
            lines.append(f"{size:>4}  {impl:<{label}}{train}{r['infer_img_s']:>13.2f}{r['infer_gflop_s']:>9.1f}"
                         f"{r['infer_pct_of_matmul_peak']:>7.1f}%{r['peak_rss_mb']:>13.0f}{loss}{ops}")
        for impl in impls[1:]:
            ratio = {k: by[impl][k] / by["plain"][k] for k in ("infer_img_s", "peak_rss_mb")}
            trained = by[impl]["train_img_s"] is not None  # then plain trained too
            train = f"{by[impl]['train_img_s'] / by['plain']['train_img_s']:>11.2f}x" if trained else f"{'-':>12}"
            lines.append(f"{size:>4}  {impl + '/plain':<{label}}{train}{'':>17}"
                         f"{ratio['infer_img_s']:>12.2f}x{'':>17}{ratio['peak_rss_mb']:>12.2f}x")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="224,112,64", help="image sizes, comma separated (multiples of 16)")
    parser.add_argument("--width", type=float, default=1.0, help="channel multiplier (1.0 = the paper's network)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per child process")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--rounds", type=int, default=2, help="alternations: plain-ours, ours-plain, ...")
    parser.add_argument("--json", metavar="PATH", help="write one JSON object per row (and the epoch) to PATH")
    parser.add_argument("--epoch-data", default=str(SHARED_DATA if SHARED_DATA.is_dir() else REPO / "src/crosssite/sample_data"),
                        help="data folder for the epoch measurement (default: ../shared/data, else the sample)")
    parser.add_argument("--epoch-size", type=int, default=112, help="image size of the epoch measurement")
    parser.add_argument("--no-epoch", action="store_true", help="skip the epoch measurement")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where to train; cuda adds the row ours-eager (ours without the CUDA graph)")
    parser.add_argument("--infer-only", action="store_true",
                        help="measure inference only (no training steps, no epoch)")
    parser.add_argument("--onnxruntime", action="store_true",
                        help="add an onnxruntime inference row (CPU only; needs the [onnx] extra)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:  # a child process: measure one thing and print it as JSON
        kind, *rest = args.worker
        if kind == "steps":
            result = worker_steps(rest[0], int(rest[1]), args.width, args.warmup, args.steps, args.device,
                                  args.infer_only)
        elif kind == "matmul":
            result = worker_matmul(device=args.device)
        else:
            result = worker_epoch(rest[0], int(rest[1]), args.width, args.device)
        print(json.dumps(result))
        return

    sizes = [int(s) for s in args.sizes.split(",")]
    bad = [s for s in sizes if s < 32 or s % 16]
    if bad:
        parser.error(f"--sizes: crosssite trains at multiples of 16 px (at least 32), got {bad}")
    if args.onnxruntime and args.device == "cuda":
        parser.error("--onnxruntime runs on the CPU only (onnxruntime's CPU provider); leave out --device cuda")
    if args.device == "cuda" and args.warmup < 5 and not args.infer_only:
        parser.error("--device cuda: --warmup must be at least 5 (the CUDA graph is recorded after 3 eager steps)")
    if args.onnxruntime and importlib.util.find_spec("onnxruntime") is None:
        parser.error("--onnxruntime needs the optional extra: pip install -e '.[onnx]'")
    common = ["--width", str(args.width), "--steps", str(args.steps), "--warmup", str(args.warmup),
              "--device", args.device, *(["--infer-only"] if args.infer_only else [])]
    impls = ("plain", "ours-eager", "ours") if args.device == "cuda" else ("plain", "ours")
    impls += ("onnxruntime",) if args.onnxruntime else ()
    peaks = [_run_child("plain", "matmul", "--device", args.device)["gflop_s"]]
    rows = []
    for size in sizes:
        runs = {impl: [] for impl in impls}
        for round_ in range(args.rounds):
            order = impls if round_ % 2 == 0 else impls[::-1]
            for impl in order:
                print(f"... {size} px {impl} (round {round_ + 1}/{args.rounds})", file=sys.stderr, flush=True)
                runs[impl].append(_run_child(impl, "steps", impl, str(size), *common))
        peaks.append(_run_child("plain", "matmul", "--device", args.device)["gflop_s"])
        rows += [(impl, size, r, runs["plain"]) for impl, r in runs.items()]
    peak = max(peaks)  # the best of repeated measurements is the closest to the machine's peak
    rows = [_row(impl, size, r, peak, plain) for impl, size, r, plain in rows]
    print(_table(rows, peak, args.width, impls))

    epoch = None
    if not args.no_epoch and not args.infer_only:
        print(f"... one epoch at {args.epoch_size} px on {args.epoch_data}", file=sys.stderr, flush=True)
        epoch = _run_child("ours", "epoch", args.epoch_data, str(args.epoch_size), "--width", str(args.width),
                           "--device", args.device)
        epoch["impl"] = "ours-epoch"
        print(f"\nepoch ({epoch['data']}, {epoch['image_size']} px, width {epoch['width']}, {epoch['steps']} steps "
              f"+ validation): {epoch['epoch_s']:.1f} s, of which making batches {epoch['batch_s']:.2f} s "
              f"({100 * epoch['data_share']:.1f} %); decoding every image once beforehand: {epoch['decode_s']:.1f} s")
    if args.json:
        Path(args.json).write_text("".join(json.dumps(r) + "\n" for r in rows + ([epoch] if epoch else [])))


if __name__ == "__main__":
    main()
