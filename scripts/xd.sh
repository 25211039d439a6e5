#!/usr/bin/env bash
# Cross-dataset transfer and domain generalisation (CoCoOp's xd scripts): each method is trained once
# on ImageNet (all 1000 classes, 16 shots, its cross-dataset config; the "source"), then that model
# is evaluated, without training, on the 10 other datasets and on ImageNet-V2/-Sketch/-A/-R.
#
#   bash scripts/xd.sh METHODS SEEDS [TARGETS] [KEY VALUE ...]
#
#   METHODS    comma list or `all` (every method with a cross-dataset setting); METHOD:CFG picks a
#              config (a name or a YAML path)
#   SEEDS      comma list, or `all` (1,2,3)
#   TARGETS    comma list of dataset config stems; `all` (default: the 10 datasets and the 4
#              variants), `xd` (the 10), `dg` (the 4), or `none` (the sources only)
#   KEY VALUE  config options for every run (source and targets)
#
# Environment: DATA (dataset root, default data), OUTPUT (default output), SHOTS (source shots,
# default 16), TAG (a sub-folder below the config folder, to keep a variant's runs apart), PHASE
# (both: default; train: the sources only; test: the targets only, whose sources must be finished),
# LOADEP (source epoch to evaluate, default the latest, i.e. the last), TRAINER_MODULE, PYTHON.
#
# Output: the source $OUTPUT/imagenet/METHOD/CFG_16shots[/TAG]/seedS and each target
# $OUTPUT/evaluation/METHOD/CFG_16shots[/TAG]/TARGET/seedS. Zero-shot CLIP is evaluated once per
# dataset into $OUTPUT/ZeroshotCLIP/CFG/DATASET (ImageNet included). DPC_<BACKBONE> first runs (or
# reuses) the backbone's source run (stage 1), trains stage 2 on ImageNet, and evaluates that.
# A class-specific context (TRAINER.COOP.CSC True) cannot transfer: the grid stops before any run.
# A target is evaluated only once its source has finished (results.json); otherwise it fails naming
# the source run to finish first. Done runs are skipped, interrupted ones resume, runs are locked
# while they run, and a failed run does not stop the others.
# Example: bash scripts/xd.sh ZeroshotCLIP,CoOp,MaPLe all && python parse_results.py output/
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export DATA=${DATA:-data} OUTPUT=${OUTPUT:-output} SHOTS=${SHOTS:-16} TAG=${TAG:-}
export PYTHON=${PYTHON:-python} TRAINER_MODULE=${TRAINER_MODULE:-}
PHASE=${PHASE:-both}
if [[ $# -lt 2 ]]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
    exit 2
fi
METHODS=$1 SEEDS=$2
shift 2
TARGETS=all
if [[ $# -gt 0 && ! $1 =~ ^[A-Z][A-Z0-9_]*\. ]]; then  # config keys look like OPTIM.MAX_EPOCH
    TARGETS=$1
    shift
fi
EXTRA=("$@")
for ((i = 0; i < ${#EXTRA[@]}; i += 2)); do
    case ${EXTRA[i]} in
        DATASET.NUM_SHOTS | DATASET.SUBSAMPLE_CLASSES)
            echo "xd.sh: ${EXTRA[i]} is set by the script (use SHOTS=K for the source's shots)" >&2
            exit 2 ;;
    esac
done
case $PHASE in
    both) ;;
    train) TARGETS=none ;;
    test) ;;
    *) echo "xd.sh: PHASE must be both, train or test (got '$PHASE')" >&2; exit 2 ;;
esac

resolve() {  # METHOD CFG SEED TARGETS: sets CFG_NAME CONFIG_FILE RUN_DIR SOURCE_DIR EVAL_ONLY BACKBONE
    local resolved  # STAGE1_DIR RUN_NAME METHOD_OPTS, and the targets' TARGET_LIST and RUN_DIRS
    resolved=$("$PYTHON" "$REPO/scripts/methods.py" xd "$1" "$3" "$4" --cfg "$2" --opts "${EXTRA[@]}") || return 2
    eval "$resolved"
}

# train.py's arguments common to every run of the resolved method
common_args() {
    COMMON=(--root "$DATA" --trainer "$1" --config-file "$CONFIG_FILE")
    local module modules
    IFS=, read -r -a modules <<< "$TRAINER_MODULE"
    for module in "${modules[@]}"; do
        COMMON+=(--trainer-module "$module")
    done
    STAGE1=()
    [[ -z $BACKBONE ]] || STAGE1=(TRAINER.DPC.BACKBONE_DIR "$STAGE1_DIR")
}

# The source of METHOD and SEED (zero-shot CLIP: its ImageNet evaluation); in a subshell with `set -e`.
run_source() {
    local method=$1 cfg=$2 seed=$3
    resolve "$method" "$cfg" "$seed" none
    mkdir -p "$(dirname "$RUN_DIR")"
    if command -v flock > /dev/null; then  # a second caller waits here, then finds the run done
        exec 9> "$(dirname "$RUN_DIR")/.$(basename "$RUN_DIR").lock"
        flock 9
    fi
    if [[ -f $RUN_DIR/results.json ]]; then
        echo "Done already: $RUN_NAME ($RUN_DIR)"
        return 0
    elif [[ $PHASE == test ]]; then  # PHASE=test evaluates targets only
        [[ $EVAL_ONLY == 1 ]] && return 0  # zero-shot CLIP's targets need no source
        echo "xd.sh: the source run $RUN_DIR is not finished (no results.json); train it first:" \
             "bash scripts/xd.sh $method${cfg:+:$cfg} $seed none" >&2
        return 1
    fi
    common_args "$method"
    COMMON+=(--dataset-config-file "$REPO/configs/datasets/imagenet.yaml" --output-dir "$RUN_DIR")
    if [[ $EVAL_ONLY == 1 ]]; then  # zero-shot CLIP: every class, the full test split, no seed
        "$PYTHON" "$REPO/train.py" "${COMMON[@]}" --eval-only "${METHOD_OPTS[@]}" "${EXTRA[@]}"
        return 0
    fi
    if [[ -n $BACKBONE ]]; then  # DPC: the backbone's source run comes first
        PHASE=train TAG="" bash "$REPO/scripts/xd.sh" "$BACKBONE" "$seed" none "${EXTRA[@]}"
    fi
    "$PYTHON" "$REPO/train.py" "${COMMON[@]}" --seed "$seed" "${METHOD_OPTS[@]}" "${EXTRA[@]}" \
        DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES all "${STAGE1[@]}"
}

# The unfinished targets (resolved: TARGET_LIST, RUN_DIRS), evaluated in one process (the interpreter
# and CLIP's imports started once) with the source's model; in a subshell with `set -e`.
run_targets() {
    local method=$1 cfg=$2 seed=$3 pending=() i
    for i in "${!TARGET_LIST[@]}"; do
        if [[ -f ${RUN_DIRS[i]}/results.json ]]; then
            echo "Done already: ${TARGET_LIST[i]} (${RUN_DIRS[i]})"
        else
            pending+=("${TARGET_LIST[i]}=${RUN_DIRS[i]}")
        fi
    done
    [[ ${#pending[@]} -gt 0 ]] || return 0
    common_args "$method"
    if [[ $EVAL_ONLY == 1 ]]; then  # zero-shot CLIP
        COMMON+=(--eval-only "${METHOD_OPTS[@]}" "${EXTRA[@]}")
    elif [[ ! -f $SOURCE_DIR/results.json ]]; then  # never a half-trained source
        echo "xd.sh: cannot evaluate $method${cfg:+:$cfg} seed $seed on ${pending[*]%%=*}: its source run" \
             "$SOURCE_DIR is missing or unfinished (no results.json); finish it first:" \
             "bash scripts/xd.sh $method${cfg:+:$cfg} $seed none" >&2
        return 1
    else  # no shots: the targets' data are not sampled
        COMMON+=(--seed "$seed" --eval-only --model-dir "$SOURCE_DIR" --load-epoch "${LOADEP:--1}"
                 "${METHOD_OPTS[@]}" "${EXTRA[@]}" DATASET.SUBSAMPLE_CLASSES all "${STAGE1[@]}")
    fi
    "$PYTHON" "$REPO/scripts/eval_targets.py" "${pending[@]}" -- "${COMMON[@]}"
}

# The grid (checked before anything runs), one job per line: METHOD CFG SEED TARGET (`none`: the source).
grid=$("$PYTHON" "$REPO/scripts/methods.py" grid xd "$METHODS" "$TARGETS" "$SEEDS" --shots "$SHOTS" \
       --opts "${EXTRA[@]}") || exit 2
[[ -n $grid ]] || { echo "xd.sh: empty grid" >&2; exit 2; }
mapfile -t jobs <<< "$grid"
failed=()
count=0
batch=() batch_of=()  # consecutive targets of one (method, cfg, seed), evaluated together
flush_targets() {
    [[ ${#batch[@]} -gt 0 ]] || return 0
    local method=${batch_of[0]} cfg=${batch_of[1]} seed=${batch_of[2]} list i status
    list=$(IFS=,; echo "${batch[*]}")
    echo "=== [$((count + 1))-$((count + ${#batch[@]}))/${#jobs[@]}] xd ${method}${cfg:+:$cfg} imagenet -> $list seed $seed"
    count=$((count + ${#batch[@]}))
    batch=()
    if ! resolve "$method" "$cfg" "$seed" "$list"; then
        failed+=("${method}${cfg:+:$cfg} imagenet -> $list seed $seed")
        return 0
    fi
    (set -e; run_targets "$method" "$cfg" "$seed")
    status=$?
    for i in "${!TARGET_LIST[@]}"; do
        [[ -f ${RUN_DIRS[i]}/results.json ]] || failed+=("${method}${cfg:+:$cfg} imagenet -> ${TARGET_LIST[i]} seed $seed (exit $status)")
    done
}
for job in "${jobs[@]}"; do
    IFS=$'\t' read -r method cfg seed target <<< "$job"
    [[ $cfg == - ]] && cfg=""
    if [[ $target != none ]]; then
        [[ ${#batch[@]} -gt 0 && "${batch_of[*]}" == "$method $cfg $seed" ]] || flush_targets
        batch_of=("$method" "$cfg" "$seed")
        batch+=("$target")
        continue
    fi
    flush_targets
    count=$((count + 1))
    echo "=== [$count/${#jobs[@]}] xd ${method}${cfg:+:$cfg} source (imagenet) seed $seed"
    (set -e; run_source "$method" "$cfg" "$seed")
    status=$?
    [[ $status -eq 0 ]] || failed+=("${method}${cfg:+:$cfg} source (imagenet) seed $seed (exit $status)")
done
flush_targets

echo "=== xd: $((count - ${#failed[@]})) of $count runs finished"
if [[ ${#failed[@]} -gt 0 ]]; then
    printf 'failed: %s\n' "${failed[@]}"
    exit 1
fi
