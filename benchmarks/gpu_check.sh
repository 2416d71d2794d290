#!/usr/bin/env bash
# The GPU check of mura-lightning, prepared to run in one call whenever a GPU is lent (issue 14):
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--stages part1|part2|part3|install,data,...] OUT
#
# From the repo root. Stages, in order, each under its own time limit; the budget is the sum of the limits of the
# stages asked for, so each stage gets its whole limit (a GPU_CHECK_BUDGET_S below that sum is refused). A stage
# that fails or runs out of time is recorded and the next one still runs. A lent GPU runs at most 600 s a call, so
# the check is three calls: `--stages part1` (install, data, tests, bench_eager: 30 + 30 + 330 + 150 = 540 s),
# `--stages part2` (install, bench_compiled, bench_autotune: 30 + 240 + 120 = 390 s) and `--stages part3` (install,
# paper: 30 + 360 = 390 s), each with 15 s for the card's name and the summary; paper does not fit beside part1 or
# part2 (540 + 360 and 390 + 360 are over 600). All stages in one call (the default) suit a machine without that
# limit. On the second loan (H200) the tests' checks (a)-(e) took 194 s, so tests has 330 s for (f) too.
#   install         what the machine lacks (hydra-core, omegaconf, antlr4, grad-cam, ttach, test tools), from the
#                   wheels in gpu-wheels/ (`make gpu-wheels` fills it), without the network
#   data            a synthetic MURA of plain lesions on every view (the tests' CHECK_DATA; 128 px, (f) 320 px)
#   tests           pytest -m gpu (tests/test_gpu.py)
#   bench_eager     benchmarks/gpu.py: fp32/bf16 x NCHW/NHWC eager, the levers, the loader with 8 and 16 workers,
#                   the Lightning / plain ratio
#   bench_compiled  the same four variants under torch.compile (bf16 channels_last first)
#   bench_autotune  torch.compile mode=max-autotune
#   paper           benchmarks/paper_scale.py: a MURA-sized synthetic tree (39,906 images) written, indexed and cached
#                   at 320 px, then one epoch of experiment=paper (batch 64) through the train entry, against the
#                   model-only images/s of the same variant (figure epoch_over_model/<backbone>). Its tree and cache
#                   (6.2 GiB) live in GPU_CHECK_PAPER_DIR (default outputs/paper_scale, kept on the machine between
#                   calls), so a call cut short after the generation reuses them. On 2 shared CPU cores the
#                   generation took 193 s and the cache 82 s (benchmarks/RESULTS.md); on the 16-core H200 machine,
#                   whose data stage wrote 1,750 images in 6 s, expect generate 30-90 s, index and cache (4 workers)
#                   20-60 s, and the epoch of DenseNet-169 (33,018 training images at about 750 img/s model-only,
#                   its validation, checkpoints and start-up) 90-150 s: at most about 300 s of the 360.
# Stages get SIGINT when their limit is reached (pytest still writes its JUnit file), SIGKILL 20 s later.
# Inductor's FX-graph and autograd caches live in GPU_CHECK_COMPILE_CACHE (default outputs/compile_cache, kept on
# the machine between calls), so what one stage or call compiled the next one loads.
# Writes OUT/gpu_results.json (benchmarks/gpu_summary.py) and OUT/gpu_check.log; prints the card's name first and
# a summary last. Exits 0 when every stage that ran passed.
#
# --dry-run: the same stages on the CPU at tiny sizes (nothing installed when the imports are present, nothing
# compiled); tests/test_benchmarks.py runs it, so make test keeps this script working between GPU loans.
# Environment: PYTHON (default python3), GPU_CHECK_BUDGET_S (default: the stages' limits added up),
# GPU_CHECK_COMPILE_CACHE, GPU_CHECK_PAPER_DIR.
set -uo pipefail

usage() {
    echo "usage: bash benchmarks/gpu_check.sh [--dry-run] [--stages part1|part2|part3|install,data,tests,bench_eager,bench_compiled,bench_autotune,paper] OUT" >&2
    exit 2
}

ALL_STAGES="install,data,tests,bench_eager,bench_compiled,bench_autotune,paper"
PART1="install,data,tests,bench_eager"
PART2="install,bench_compiled,bench_autotune"
PART3="install,paper"
DRY_RUN=0
STAGES=$ALL_STAGES
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --stages) [ $# -ge 2 ] || usage; STAGES=$2; shift ;;
        --stages=*) STAGES=${1#--stages=} ;;
        -h|--help) usage ;;
        -*) echo "gpu_check.sh: unknown option $1" >&2; usage ;;
        *) [ -z "$OUT" ] || usage; OUT=$1 ;;
    esac
    shift
done
[ -n "$OUT" ] || usage
case "$STAGES" in
    part1) STAGES=$PART1 ;;
    part2) STAGES=$PART2 ;;
    part3) STAGES=$PART3 ;;
esac
for stage in ${STAGES//,/ }; do
    case ",$ALL_STAGES," in
        *",$stage,"*) ;;
        *) echo "gpu_check.sh: unknown stage '$stage'; the stages are $ALL_STAGES" >&2; exit 2 ;;
    esac
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
PYTHON=${PYTHON:-python3}
WHEELS="$REPO/gpu-wheels"
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/gpu_check.log"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
: >"$LOG"
: >"$WORK/stages.tsv"
export PYTHONPATH="$REPO:$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

# Each stage's time limit in seconds: on a GPU part1, part2 and part3 each fit one 600 s call.
declare -A LIMIT_S
if [ "$DRY_RUN" = 1 ]; then
    LIMIT_S=([install]=60 [data]=120 [tests]=420 [bench_eager]=240 [bench_compiled]=0 [bench_autotune]=0 [paper]=180)
    STUDIES_PER_PART=6
    export MURA_GPU_TEST_DEVICE=cpu
    BENCH_COMMON=(--device cpu --size 32 --batch-size 2 --steps 1 --warmup-steps 1 --backbones resnet50)
    # the compiled variant cannot compile in 0.05 s: it checks that a compile cut short falls back to eager
    EAGER_ARGS=(--variants resnet50/bf16/nhwc resnet50/fp32/nchw/fused/nobench resnet50/fp32/nchw/compile
        --compile-timeout-s 0.05 --workers 0 --pipeline-images 8 --ratio-rounds 1 --ratio-variant resnet50/fp32/nchw)
    PAPER_DIR="$WORK/paper"
    # a few studies, 32 px, two training batches of ResNet-50 (the first is not timed), one validation batch, no
    # checkpoints: the stages' code, not the scale
    PAPER_ARGS=(--device cpu --studies-per-part 6 --generate-workers 1 --model-steps 1 --model-warmup-steps 1
        model=resnet50 model.preprocessing.image_size=32 data.batch_size=4 data.num_workers=0 callbacks.cam=null
        callbacks.metrics_report=null callbacks.model_checkpoint=null callbacks.last_checkpoint=null
        trainer.limit_train_batches=2 trainer.limit_val_batches=1 trainer.num_sanity_val_steps=0)
else
    LIMIT_S=([install]=30 [data]=30 [tests]=330 [bench_eager]=150 [bench_compiled]=240 [bench_autotune]=120 [paper]=360)
    STUDIES_PER_PART=100
    export MURA_GPU_TEST_DEVICE=cuda
    BENCH_COMMON=(--device cuda)
    # The first loan (H200, 2026-11-27) measured the eager grid; bf16 NHWC stays as the reference of the levers.
    EAGER_ARGS=(--variants densenet169/bf16/nhwc resnet50/bf16/nhwc levers --workers 8 16 --ratio-rounds 1)
    PAPER_DIR=${GPU_CHECK_PAPER_DIR:-$REPO/outputs/paper_scale}
    # experiment=paper as configured (trainer=gpu), at the batch gpu.py measures: the ratio compares like with like
    PAPER_ARGS=(--device cuda data.batch_size=64)
fi
NEEDED_S=0
for stage in ${STAGES//,/ }; do
    NEEDED_S=$((NEEDED_S + LIMIT_S[$stage]))
done
BUDGET_S=${GPU_CHECK_BUDGET_S:-$((NEEDED_S + 15))}  # 15 s: the card's name and the summary
if [ "$BUDGET_S" -lt "$NEEDED_S" ]; then
    echo "gpu_check.sh: the stages $STAGES need ${NEEDED_S} s (their limits added up), more than GPU_CHECK_BUDGET_S=${BUDGET_S}: ask for fewer stages (--stages part1, then part2, then part3) or a larger budget" >&2
    exit 2
fi
DATA="$WORK/data"
PIPELINE_ROOT=()  # the data stage's tree, once it is written
export TORCHINDUCTOR_CACHE_DIR=${GPU_CHECK_COMPILE_CACHE:-$REPO/outputs/compile_cache}
mkdir -p "$TORCHINDUCTOR_CACHE_DIR" || exit 2

log() { echo "$*" | tee -a "$LOG"; }

# run_stage NAME COMMAND...: runs it with its output in the log, under min(its limit, what the budget has left),
# records status, exit code and seconds in stages.tsv, and returns 0 when it passed.
run_stage() {
    local name=$1 limit=${LIMIT_S[$1]}
    shift
    local left=$((BUDGET_S - SECONDS - 5))
    if [ "$left" -lt 10 ]; then
        log "== $name: skipped, the ${BUDGET_S} s budget is spent"
        printf '%s\tskipped (budget spent)\t0\t0\n' "$name" >>"$WORK/stages.tsv"
        return 1
    fi
    [ "$limit" -le "$left" ] || limit=$left
    log "== $name (limit ${limit} s): $*"
    local started=$SECONDS
    if declare -F "$1" >/dev/null; then  # a function of this script, exported: timeout runs programs only
        set -- bash -c '"$@"' _ "$@"
    fi
    timeout --signal=INT --kill-after=20 "$limit" "$@" 2>&1 | tee "$WORK/$name.log" >>"$LOG"
    local code=${PIPESTATUS[0]}
    local status=ok
    case "$code" in
        0) ;;
        124|137) status="timed out after ${limit} s" ;;
        *) status="failed (exit $code)" ;;
    esac
    log "== $name: $status in $((SECONDS - started)) s"
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$code" "$((SECONDS - started))" >>"$WORK/stages.tsv"
    [ "$status" = ok ]
}

skip_stage() {
    log "== $1: skipped ($2)"
    printf '%s\tskipped\t0\t0\n' "$1" >>"$WORK/stages.tsv"
}

wanted() { case ",$STAGES," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# The card's name, torch and CUDA versions (also when the later stages fail).
"$PYTHON" - "$WORK/env.json" "$DRY_RUN" <<'EOF' 2>&1 | tee -a "$LOG"
import json, platform, sys
info = {"python": platform.python_version(), "host": platform.node()}
try:
    import torch
    cuda = torch.cuda.is_available()
    info.update(torch=torch.__version__, cuda=torch.version.cuda, gpus=torch.cuda.device_count() if cuda else 0)
    info["card"] = torch.cuda.get_device_name(0) if cuda else "none"
except ImportError as err:
    info["card"] = f"unknown (torch does not import: {err})"
if sys.argv[2] == "1":
    info["card"] = f"{info['card']} (CPU dry run)"
with open(sys.argv[1], "w") as file:
    json.dump(info, file)
print(f"card: {info['card']}  torch {info.get('torch')}  CUDA {info.get('cuda')}  Python {info['python']}")
EOF

# install: modules the package and its tests import, with the wheel that provides each; only missing ones.
install_missing() {
    local missing
    missing=$("$PYTHON" - <<'EOF'
import importlib.metadata
import importlib.util

needed = {
    "hydra": "hydra-core", "omegaconf": "omegaconf", "antlr4": "antlr4-python3-runtime",
    "pytorch_grad_cam": "grad-cam", "ttach": "ttach", "pytest": "pytest", "pluggy": "pluggy",
    "iniconfig": "iniconfig", "rich": "rich", "markdown_it": "markdown-it-py", "mdurl": "mdurl",
    "pygments": "pygments", "seaborn": "seaborn",
}
# omegaconf's grammar needs this runtime series; another one imports but fails at the first config
versions = {"antlr4-python3-runtime": "4.9."}


def usable(module, dist):
    if importlib.util.find_spec(module) is None:
        return False
    try:
        return importlib.metadata.version(dist).startswith(versions.get(dist, ""))
    except importlib.metadata.PackageNotFoundError:
        return dist not in versions


print(" ".join(dist for module, dist in needed.items() if not usable(module, dist)))
EOF
    ) || return 1
    if [ -z "$missing" ]; then
        echo "nothing to install: every module imports"
        return 0
    fi
    if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        echo "missing: $missing, and no wheels in $WHEELS: run 'make gpu-wheels' on a machine with the network and carry gpu-wheels"
        return 1
    fi
    echo "installing from $WHEELS: $missing"
    # shellcheck disable=SC2086  # one word per distribution
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --find-links "$WHEELS" \
        --target "$WORK/site" $missing || return 1
    "$PYTHON" -c "import hydra, omegaconf, pytorch_grad_cam, ttach, pytest, rich, seaborn; print('imports ok')"
}

export -f install_missing
export PYTHON WHEELS WORK
BENCH=("$PYTHON" benchmarks/gpu.py "${BENCH_COMMON[@]}" --results "$WORK/figures.jsonl")

wanted install && run_stage install install_missing
# The settings of tests/test_gpu.py's CHECK_DATA (tests/test_benchmarks.py checks they agree): every part's lesions
# plain and on every view of an abnormal study, as the checks judge the GPU path, not how subtle a lesion or how
# few views an image-level model can learn from. The tests use this tree only when it was written (otherwise they
# write their own).
if wanted data && run_stage data "$PYTHON" -m mura_lightning.synthetic root="$DATA" \
    studies_per_part=$STUDIES_PER_PART seed=0 difficulty=0 lesion_views.fracture=all lesion_views.lytic=all; then
    export MURA_GPU_TEST_DATA="$DATA"
    PIPELINE_ROOT=(--pipeline-root "$DATA/MURA-v1.1")
fi
wanted tests && run_stage tests "$PYTHON" -m pytest tests/test_gpu.py -m gpu -v -rfE -p no:cacheprovider \
    --junitxml="$WORK/junit.xml"
wanted bench_eager && run_stage bench_eager "${BENCH[@]}" "${EAGER_ARGS[@]}" "${PIPELINE_ROOT[@]}"
if [ "$DRY_RUN" = 1 ]; then
    wanted bench_compiled && skip_stage bench_compiled "dry run: compiling takes minutes on a CPU"
    wanted bench_autotune && skip_stage bench_autotune "dry run: compiling takes minutes on a CPU"
else
    # Compiling DenseNet-169 outlasted 187 s on the first loan: ResNet-50 first, so a stage cut short keeps it.
    wanted bench_compiled && run_stage bench_compiled "${BENCH[@]}" --variants resnet50/bf16/nhwc/compile \
        densenet169/bf16/nhwc/compile --workers --ratio-rounds 0
    wanted bench_autotune && run_stage bench_autotune "${BENCH[@]}" --variants resnet50/bf16/nhwc/max-autotune \
        --workers --ratio-rounds 0
fi
wanted paper && run_stage paper "$PYTHON" benchmarks/paper_scale.py --work "$PAPER_DIR" --results "$WORK/figures.jsonl" \
    "${PAPER_ARGS[@]}"

summary_args=(--work "$WORK" --out "$OUT" --wall-s "$SECONDS" --tests-file tests/test_gpu.py)
[ "$DRY_RUN" = 1 ] && summary_args+=(--dry-run)
"$PYTHON" benchmarks/gpu_summary.py "${summary_args[@]}" 2>&1 | tee -a "$LOG"
cp "$WORK/junit.xml" "$OUT/gpu_tests_junit.xml" 2>/dev/null
if grep -qv $'\t\(ok\|skipped\)' "$WORK/stages.tsv"; then
    exit 1
fi
exit 0
