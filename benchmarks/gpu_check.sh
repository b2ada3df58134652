#!/usr/bin/env bash
# One bounded GPU session for issue 11, run from the repository root on the GPU machine (no ../shared there:
# the data is .gpu/, a copy of ../shared/gpu-data with its wheels). SECTIONS (default "a b c") picks what runs;
# everything useful lands in $OUT:
#   gpu_check.log   this script's log: every section's command, output tail, seconds and exit status
#   env.txt         nvidia-smi, torch / CUDA versions, the commit
#   check.jsonl     (a) correctness: single pass = per-site pass (as run, and with TF32 off), CUDA graph = eager
#                   (fp32, bf16), last.pt write time
#   bench.txt/.jsonl (b) benchmark rows at 224 and 112 px on cuda: plain, ours-eager, ours (img/s, ops_per_step)
#   runs.tar.gz     trainings at the paper's settings on fold 0 (configs, logs, metrics, predictions; no .pt):
#                   (c) contrastive and sepnorm side by side, EPOCHS;
#                   (d) contrastive alone, EPOCHS (issue 11's "100-epoch job <= 3 min");
#                   (e) contrastive fp32 and bf16 side by side, EPOCHS_PRECISION (default 20): bf16's AUC cost;
#                   (f) `sweep --rows contrastive --seeds 1 --epochs EPOCHS_SWEEP` (default 3) with --jobs 1, then 3
#   summary.txt     per training: epochs done, median seconds per epoch, test AUC per site if finished
# EPOCHS (default 20) bounds (c) and (d); SECTION_LIMIT (default 240 s) stops each of (c)-(f) in any case (the runs
# stay resumable, their logs are kept). Keep the sum of the chosen sections' limits under the device tool's 600 s
# per call: a: 120, b: 150, setup and summary: 40.
#   pip install -q --no-index --no-deps --target /tmp/site .gpu/wheels/*.whl && export PYTHONPATH=/tmp/site:$PWD/src \
#       && SECTIONS="a d" benchmarks/gpu_check.sh                 # on the GPU machine
#   PYTHON=.venv/bin/python SECTIONS="a b c d e f" benchmarks/gpu_check.sh --dry-run
#                                                               # anywhere: the same sections on the CPU at toy
#                                                               # sizes on the shipped sample
set -u
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: > "$LOG"

if [ "$DRY" = 1 ]; then
    DEVICE=cpu; DATA=src/crosssite/sample_data; EPOCHS=${EPOCHS:-1}; EPOCHS_PRECISION=${EPOCHS_PRECISION:-1}
    BF16=""  # refused on a CPU: the dry run trains fp32 twice
    CHECK_ARGS="--size 32 --width 0.125 --batch-per-site 4"
    BENCH_ARGS="--sizes 32 --width 0.125 --steps 1 --warmup 1 --rounds 1"
    TRAIN_ARGS="--image-size 32 --width 0.125 --batch-per-site 4"
    export OMP_NUM_THREADS=1
else
    DEVICE=cuda; DATA=.gpu; EPOCHS=${EPOCHS:-20}; EPOCHS_PRECISION=${EPOCHS_PRECISION:-20}
    BF16="--precision bf16"
    CHECK_ARGS="--size 112"
    BENCH_ARGS="--sizes 224,112 --steps 20 --warmup 5 --rounds 1"
    TRAIN_ARGS=""   # the paper's settings: 224 px, width 1, 16+16, Adam 1e-4 cosine (over EPOCHS)
fi
SECTIONS=${SECTIONS:-a b c}
SECTION_LIMIT=${SECTION_LIMIT:-${SECTION_C_LIMIT:-240}}
EPOCHS_SWEEP=${EPOCHS_SWEEP:-3}
PYTHON=${PYTHON:-python}

section() {  # section NAME LIMIT_SECONDS COMMAND: run it bounded, log its tail, never stop the script
    local name=$1 limit=$2 command=$3
    echo "=== $name: $command (limit ${limit}s) $(date -u +%FT%TZ)" >> "$LOG"
    local started=$SECONDS
    timeout --kill-after=10 "$limit" bash -c "$command" > "$OUT/.section.out" 2>&1
    local rc=$?
    tail -c 6000 "$OUT/.section.out" >> "$LOG"
    echo "=== $name: exit $rc after $((SECONDS - started)) s" >> "$LOG"
    echo "$name: exit $rc after $((SECONDS - started)) s"
    rm -f "$OUT/.section.out"
}

setup() {
    if [ -d .gpu/wheels ] && [ ! -d /tmp/site/openpyxl ]; then  # the run's command normally did it already
        pip install -q --no-index --no-deps --target /tmp/site .gpu/wheels/*.whl
    fi
    {
        nvidia-smi 2>&1 || echo "no nvidia-smi"
        "$PYTHON" -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
        git log -1 --oneline 2>/dev/null || true
    } > "$OUT/env.txt" 2>&1
}

train_side_by_side() {  # train_side_by_side EPOCHS "LABEL TRAIN-FLAGS..." ...: at once on the one device, fold 0
    local epochs=$1; shift
    local pids=() spec label
    for spec in "$@"; do
        label=${spec%% *}
        "$PYTHON" -m crosssite train ${spec#* } --data "$DATA" --fold 0 --epochs "$epochs" --device "$DEVICE" \
            --quiet $TRAIN_ARGS --out "$RUNS/$label" > "$RUNS/$label.out" 2>&1 &
        pids+=($!)
    done
    local rc=0
    for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
    tail -n 5 "$RUNS"/*.out
    return $rc
}

sweep_jobs() {  # (f): the same short sweep with 1 and with 3 workers on the one device, wall seconds of each
    local jobs started
    for jobs in 1 3; do
        started=$SECONDS
        "$PYTHON" -m crosssite sweep --data "$DATA" --rows contrastive --seeds 1 --epochs "$EPOCHS_SWEEP" \
            --devices "$DEVICE" --jobs "$jobs" --quiet $TRAIN_ARGS --out "$RUNS/sweep-jobs$jobs" || return 1
        echo "sweep --jobs $jobs: $((SECONDS - started)) s for 4 jobs of $EPOCHS_SWEEP epochs"
    done
}

summary() {  # per training folder under $RUNS: epochs, median s/epoch, test AUC per site when finished
    "$PYTHON" - "$RUNS" <<'PY' | tee "$OUT/summary.txt"
import json, statistics, sys
from pathlib import Path
for log in sorted(Path(sys.argv[1]).rglob("train_log.jsonl")):
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    seconds = statistics.median(r["seconds"] for r in rows) if rows else float("nan")
    metrics = log.parent / "metrics.json"
    auc = ""
    if metrics.is_file():
        sites = json.loads(metrics.read_text())["sites"]
        auc = "  test AUC " + "  ".join(f"{n} {v['auc']:.4f}" for n, v in sites.items())
    print(f"{log.parent.relative_to(sys.argv[1])}: {len(rows)} epochs, median {seconds:.2f} s/epoch{auc}")
PY
}

export -f setup train_side_by_side sweep_jobs summary
export OUT DATA EPOCHS EPOCHS_SWEEP DEVICE TRAIN_ARGS PYTHON
export RUNS=$(mktemp -d)
export PYTHONPATH=/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
wanted() { [[ " $SECTIONS " == *" $1 "* ]]; }
section setup 30 setup
wanted a && section a_correctness 120 "$PYTHON benchmarks/gpu_check.py --device $DEVICE $CHECK_ARGS --out $OUT/check.jsonl"
wanted b && section b_benchmark 150 "$PYTHON benchmarks/throughput.py --device $DEVICE $BENCH_ARGS --no-epoch --json $OUT/bench.jsonl \
    | tee $OUT/bench.txt"
wanted c && section c_train_pair "$SECTION_LIMIT" \
    "train_side_by_side $EPOCHS 'pair-contrastive --method contrastive' 'pair-sepnorm --method sepnorm'"
wanted d && section d_alone "$SECTION_LIMIT" "train_side_by_side $EPOCHS 'alone-contrastive --method contrastive'"
wanted e && section e_precision "$SECTION_LIMIT" \
    "train_side_by_side $EPOCHS_PRECISION 'fp32-contrastive --method contrastive' 'bf16-contrastive --method contrastive $BF16'"
wanted f && section f_sweep_jobs "$SECTION_LIMIT" sweep_jobs
section summary 10 summary
tar -czf "$OUT/runs.tar.gz" -C "$RUNS" --exclude='*.pt' . >> "$LOG" 2>&1
echo "=== done $(date -u +%FT%TZ); files in $OUT: $(ls "$OUT" | tr '\n' ' ')" >> "$LOG"
tail -n 1 "$LOG"
