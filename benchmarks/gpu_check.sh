#!/usr/bin/env bash
# One bounded GPU session for issue 11, run from the repository root on the GPU machine (no ../shared there:
# the data is .gpu/, a copy of ../shared/gpu-data with its wheels). Everything useful lands in $OUT:
#   gpu_check.log   this script's log: every section's command, output tail, seconds and exit status
#   env.txt         nvidia-smi, torch / CUDA versions, the commit
#   check.jsonl     (a) correctness: single pass = per-site pass, CUDA graph = eager (fp32, bf16), last.pt write time
#   bench.txt/.jsonl (b) benchmark rows at 224 and 112 px on cuda: plain, ours-eager, ours (img/s, ops_per_step)
#   runs.tar.gz     (c) contrastive and sepnorm, paper settings, fold 0, side by side: configs, logs, metrics,
#                   predictions (no .pt files)
# EPOCHS (default 20) bounds (c); SECTION_C_LIMIT (default 240 s) stops it in any case (the runs stay
# resumable, their logs are kept). Section limits add up to 540 s, under the device tool's 600 s per call.
#   pip install -q --no-index --no-deps --target /tmp/site .gpu/wheels/*.whl && export PYTHONPATH=/tmp/site:$PWD/src \
#       && benchmarks/gpu_check.sh                              # on the GPU machine
#   PYTHON=.venv/bin/python benchmarks/gpu_check.sh --dry-run   # anywhere: the same sections on the CPU at toy
#                                                               # sizes on the shipped sample
set -u
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: > "$LOG"

if [ "$DRY" = 1 ]; then
    DEVICE=cpu; DATA=src/crosssite/sample_data; EPOCHS=${EPOCHS:-1}
    CHECK_ARGS="--size 32 --width 0.125 --batch-per-site 4"
    BENCH_ARGS="--sizes 32 --width 0.125 --steps 1 --warmup 1 --rounds 1"
    TRAIN_ARGS="--image-size 32 --width 0.125 --batch-per-site 4"
    export OMP_NUM_THREADS=1
else
    DEVICE=cuda; DATA=.gpu; EPOCHS=${EPOCHS:-20}
    CHECK_ARGS="--size 112"
    BENCH_ARGS="--sizes 224,112 --steps 20 --warmup 5 --rounds 1"
    TRAIN_ARGS=""   # the paper's settings: 224 px, width 1, 16+16, Adam 1e-4 cosine (over EPOCHS)
fi
SECTION_C_LIMIT=${SECTION_C_LIMIT:-240}
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

train_pair() {  # (c): both methods at once on the one device, each resumable in runs/
    local pids=()
    for method in contrastive sepnorm; do
        "$PYTHON" -m crosssite train --method "$method" --data "$DATA" --fold 0 --epochs "$EPOCHS" --device "$DEVICE" \
            --save-every 10 --quiet $TRAIN_ARGS --out "$RUNS/$method" > "$RUNS/$method.out" 2>&1 &
        pids+=($!)
    done
    local rc=0
    for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
    tail -n 5 "$RUNS"/*.out
    return $rc
}

export -f setup train_pair
export OUT DATA EPOCHS DEVICE TRAIN_ARGS PYTHON
export RUNS=$(mktemp -d)
export PYTHONPATH=/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
section setup 30 setup
section a_correctness 120 "$PYTHON benchmarks/gpu_check.py --device $DEVICE $CHECK_ARGS --out $OUT/check.jsonl"
section b_benchmark 150 "$PYTHON benchmarks/throughput.py --device $DEVICE $BENCH_ARGS --no-epoch --json $OUT/bench.jsonl \
    | tee $OUT/bench.txt"
section c_train_pair "$SECTION_C_LIMIT" train_pair
tar -czf "$OUT/runs.tar.gz" -C "$RUNS" --exclude='*.pt' . >> "$LOG" 2>&1
echo "=== done $(date -u +%FT%TZ); files in $OUT: $(ls "$OUT" | tr '\n' ' ')" >> "$LOG"
tail -n 1 "$LOG"
