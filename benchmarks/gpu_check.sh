#!/usr/bin/env bash
# Every GPU figure this project owes, in one command, in under 8 minutes on one H100 or H200 (issue 19):
# train_speed.py against the seed's loop, pack_speed.py for K = 1...256, gpu_memory.py (peak memory per
# trial and per pack member, torch.cuda's counters), and the reference sweep per trial and packed
# (sweep_throughput.py, with nvidia-smi sampled for GPU utilisation and memory per trial). Each step has
# a time budget; a step that fails or runs out of time is marked so in the table and the next one runs.
# Writes OUT/gpu_check.md (one table of every step and its figures, then each step's own tables),
# OUT/gpu_check.log (every step's output) and OUT/sweep_*.json, and prints the markdown.
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--cpu-smoke] [--only STEP,...] [--budget STEP=SECONDS ...]
#
#   --out DIR      where the files go (default results/gpu_check; $OUT on the device machine)
#   --cpu-smoke    every step at a tiny size on the CPU, in seconds: checks the script, not the GPU
#   --only         a subset of: train_speed, pack_speed, gpu_memory, sweep_trial, sweep_packed
#   --budget       override a step's time budget (seconds); also GPU_CHECK_PYTHON picks the interpreter
#
# Through the device tool, from the repository root of the checkout the session runs in (what travels):
#   once, here:
#     ../shared/tools/device-wheels .whl        # ray 2.60 + optuna wheels (~52 MiB; .whl/ is git-ignored)
#     mkdir -p .data/MNIST/raw && cp ../shared/data/mnist/*.gz .data/MNIST/raw/   # 11 MB; .data/ is ignored
#   then one call (~8 of the session's 15 device minutes, plus the machine's start; a step that failed
#   can be rerun alone in what is left, e.g. --only pack_speed):
#     run(command="bash benchmarks/gpu_check.sh --out $OUT", carry=[".whl", ".data"], timeout_s=540)
#   $OUT then holds gpu_check.md, gpu_check.log and sweep_*.json (within the tool's 8 files back).
#   The wheels, MNIST and the tree must stay under the tool's 64 MiB (du -shc .whl .data). The machine
#   reaches no registry: missing ray/optuna are installed from .whl/ with pip --no-index into a temp
#   folder; MNIST is read from $AEMODELS_DATA_DIR, else .data/, else ../shared/data/mnist (gz, unpacked).
set -uo pipefail

ARGS="$*"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY="${GPU_CHECK_PYTHON:-python3}"
OUT_DIR="$REPO/results/gpu_check"
SMOKE=0
ONLY=""
STEPS=(train_speed pack_speed gpu_memory sweep_trial sweep_packed)
declare -A BUDGET=([train_speed]=100 [pack_speed]=110 [gpu_memory]=30 [sweep_trial]=110 [sweep_packed]=80)  # 430 s, + ~30 s set-up
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) OUT_DIR="$2"; shift 2 ;;
        --cpu-smoke) SMOKE=1; shift ;;
        --only) ONLY="$2"; shift 2 ;;
        --budget) BUDGET[${2%%=*}]="${2#*=}"; shift 2 ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed 's/^# \{0,1\}//;$d'; echo; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
for step in ${ONLY//,/ }; do
    [[ " ${STEPS[*]} " == *" $step "* ]] || { echo "gpu_check.sh: unknown step $step (known: $(IFS=,; echo "${STEPS[*]}" | sed 's/,/, /g'))" >&2; exit 2; }
done
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
LOG="$OUT_DIR/gpu_check.log"
: >"$LOG"
STATUS="$WORK/status.tsv"   # step, status, wall seconds, budget
: >"$STATUS"
BEGAN=$(date +%s)

say() { echo "[gpu_check $(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }

# ---- setup: Python packages and MNIST, offline -------------------------------------------------
setup() {
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 AEMODELS_OFFLINE=1
    if ! "$PY" -c "import ray.tune, optuna" 2>/dev/null; then
        [[ -d "$REPO/.whl" ]] || { say "ray/optuna missing and no .whl/ folder (see the top of this script)"; return 1; }
        local site="$WORK/site"
        say "installing ray and optuna from .whl/ (offline) into $site"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$REPO"/.whl/*.whl \
            >>"$LOG" 2>&1 || return 1
        export PYTHONPATH="$PYTHONPATH:$site" PATH="$site/bin:$PATH"
        "$PY" -c "import ray.tune, optuna" >>"$LOG" 2>&1 || return 1
    fi
    local root found=""
    for root in "${AEMODELS_DATA_DIR:-}" "$REPO/.data"; do
        if [[ -n "$root" ]] && ls "$root"/MNIST/raw/train-images-idx3-ubyte* >/dev/null 2>&1; then
            found="$root"
            break
        fi
    done
    if [[ -z "$found" ]]; then
        [[ -d "$REPO/../shared/data/mnist" ]] || { say "MNIST not found (see the top of this script)"; return 1; }
        found="$WORK/data"
        mkdir -p "$found/MNIST/raw" && cp "$REPO"/../shared/data/mnist/*.gz "$found/MNIST/raw/"
    fi
    export AEMODELS_DATA_DIR="$found"
    say "MNIST from $found"
    if [[ $SMOKE == 0 ]] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" >>"$LOG" 2>&1; then
        say "torch sees no CUDA device: the figures need one (--cpu-smoke checks the script on a CPU)"
        return 1
    fi
    # aemodels unpacks .gz copies in place; this also checks every file reads to its last byte
    "$PY" -c "from aemodels import load_dataset; load_dataset('mnist')" >>"$LOG" 2>&1
}

# ---- the steps ------------------------------------------------------------------------------------
step_args() {  # the command of one step, at full size on the GPU or tiny on the CPU
    local md="$WORK/$1.md"
    if [[ $SMOKE == 1 ]]; then
        case "$1" in
            train_speed) echo benchmarks/train_speed.py --device cpu --subset 256 --epochs 1 --variants vanilla --threads 1 --out "$md" ;;
            pack_speed) echo benchmarks/pack_speed.py --device cpu --ks 1,2 --variants vanilla --subset 256 --separate-max 1 --out "$md" ;;
            gpu_memory) echo benchmarks/gpu_memory.py --device cpu --variants vanilla --k 2 --subset 256 --out "$md" ;;
            sweep_trial) echo benchmarks/sweep_throughput.py --device cpu --modes trial --no-anchors --trials 2 --epochs 1 --subset 500 --out "$md" ;;
            sweep_packed) echo benchmarks/sweep_throughput.py --device cpu --modes packed --no-anchors --trials 2 --epochs 1 --subset 500 --out "$md" ;;
        esac
        return
    fi
    case "$1" in
        train_speed) echo benchmarks/train_speed.py --device cuda --epochs 2 --out "$md" ;;
        pack_speed) echo benchmarks/pack_speed.py --device cuda --ks 1,4,16,64,256 --variants vanilla,conv --separate-max 4 --out "$md" ;;
        gpu_memory) echo benchmarks/gpu_memory.py --device cuda --k 64 --out "$md" ;;
        # the reference sweep (anchor_tune.py's space, full MNIST, 10 epochs, ASHA 1/3), sized to its budget
        sweep_trial) echo benchmarks/sweep_throughput.py --device cuda --modes trial --no-anchors --trials 32 --epochs 10 --out "$md" ;;
        sweep_packed) echo benchmarks/sweep_throughput.py --device cuda --modes packed --no-anchors --trials 256 --epochs 10 --out "$md" ;;
    esac
}

run_step() {
    local step="$1" budget="${BUDGET[$1]}" status start rc ms
    if [[ -n "$ONLY" && ",$ONLY," != *",$step,"* ]]; then
        printf '%s\tskipped\t-\t%s\n' "$step" "$budget" >>"$STATUS"
        return
    fi
    say "$step (budget ${budget} s): $(step_args "$step")"
    start=$(date +%s%N)
    # timeout signals the step's whole process group: a sweep's Ray goes with it
    # shellcheck disable=SC2046
    timeout --kill-after=15 "$budget" "$PY" $(step_args "$step") >>"$LOG" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124|137) status="timed out after ${budget} s" ;;
        *) status="failed (exit $rc; see gpu_check.log)" ;;
    esac
    ms=$(( ($(date +%s%N) - start) / 1000000 ))
    printf '%s\t%s\t%d.%d\t%s\n' "$step" "$status" $((ms / 1000)) $((ms % 1000 / 100)) "$budget" >>"$STATUS"
    [[ -f "$WORK/$step.json" ]] && cp "$WORK/$step.json" "$OUT_DIR/$step.json"
    say "$step: $status"
}

if setup; then
    for step in "${STEPS[@]}"; do run_step "$step"; done
else
    say "setup failed: no step can run (see gpu_check.log)"
    for step in "${STEPS[@]}"; do printf '%s\tnot run (setup failed)\t-\t%s\n' "$step" "${BUDGET[$step]}" >>"$STATUS"; done
fi

# ---- the table ------------------------------------------------------------------------------------
"$PY" "$REPO/benchmarks/gpu_check_table.py" --status "$STATUS" --steps "$WORK" --smoke "$SMOKE" \
    --wall "$(( $(date +%s) - BEGAN ))" --out "$OUT_DIR/gpu_check.md" --command "bash benchmarks/gpu_check.sh $ARGS" \
    || { echo "gpu_check.sh: could not write the table" >&2; exit 1; }
cat "$OUT_DIR/gpu_check.md"
# exit status 1 when a step that was asked for failed or ran out of time (the table still says which)
! cut -f2 "$STATUS" | grep -qv '^ok$\|^skipped$'
