#!/usr/bin/env bash
# Base-to-new for one method, dataset and seed: train on the base classes, then evaluate the
# learned prompts on the new classes (the CoCoOp base2new_train.sh + base2new_test.sh pair).
#
#   bash scripts/base2new.sh METHOD DATASET SEED [CFG] [KEY VALUE ...]
#
#   METHOD     trainer name: CoOp, KgCoOp, MaPLe, ZeroshotCLIP, DPC_CoOp, ... (scripts/methods.py)
#   DATASET    dataset config stem: imagenet, caltech101, oxford_pets, ... (configs/datasets/)
#   CFG        config name under configs/trainers/METHOD/, or a YAML path
#              (default: the method's paper config in scripts/methods.py)
#   KEY VALUE  config options for both phases (use SHOTS=, not DATASET.NUM_SHOTS)
#
# Environment: DATA (dataset root, default data), OUTPUT (default output), SHOTS (default: the
# method's, 16 for all but PromptKD),
# TAG (appended to the config folder as CFG_TAG, to keep a variant's runs apart),
# TRAINER_MODULE (out-of-tree trainer file(s) or module(s), comma-separated), LOADEP (checkpoint
# epoch to test; default model-best.pth.tar when the run selected one with TEST.FINAL_MODEL best_val,
# else the latest), PHASE (both, train or test; default both), PYTHON (default python).
# PromptKD trains on the unlabelled train split of every class (SHOTS 0 by default, the official
# shots_0 layout); its train phase reports the base classes, the test phase the new ones.
#
# Output: $OUTPUT/base2new/{train_base,test_new}/DATASET/shots_$SHOTS/METHOD/CFG/seed$SEED.
# A phase is done when its results.json exists: done phases are skipped; an interrupted one runs
# again and the trainer resumes from its last finished epoch. Nothing is ever deleted. A run is
# locked (flock on a hidden .seedS.lock beside it) while it runs, so concurrent callers wait.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export DATA=${DATA:-data} OUTPUT=${OUTPUT:-output} TAG=${TAG:-}
export PYTHON=${PYTHON:-python} TRAINER_MODULE=${TRAINER_MODULE:-}
PHASE=${PHASE:-both}

if [[ $# -lt 3 ]]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
    exit 2
fi
METHOD=$1 DATASET=$2 SEED=$3
shift 3
CFG=""
if [[ $# -gt 0 && ! $1 =~ ^[A-Z][A-Z0-9_]*\. ]]; then  # config keys look like OPTIM.MAX_EPOCH
    CFG=$1
    shift
fi
EXTRA=("$@")
for ((i = 0; i < ${#EXTRA[@]}; i += 2)); do
    case ${EXTRA[i]} in
        DATASET.NUM_SHOTS | DATASET.SUBSAMPLE_CLASSES)
            echo "base2new.sh: ${EXTRA[i]} is set by the script (use SHOTS=K for the shot count)" >&2
            exit 2 ;;
    esac
done

DATASET_CONFIG=$REPO/configs/datasets/$DATASET.yaml
if [[ ! -f $DATASET_CONFIG ]]; then
    echo "base2new.sh: unknown dataset '$DATASET' (no $DATASET_CONFIG)" >&2
    exit 2
fi

# Sets CFG_NAME SHOTS CONFIG_FILE TRAIN_DIR TEST_DIR EVAL_ONLY METHOD_OPTS RUNNER.
resolved=$("$PYTHON" "$REPO/scripts/methods.py" resolve "$METHOD" "$DATASET" "$SEED" "$CFG")
eval "$resolved"
export SHOTS

# One process per run at a time: a second caller (another launcher, or DPC reusing this run as
# its stage 1) waits here, then finds the run done.
mkdir -p "$(dirname "$TRAIN_DIR")"
if command -v flock > /dev/null; then
    exec 9> "$(dirname "$TRAIN_DIR")/.$(basename "$TRAIN_DIR").lock"
    flock 9
fi

case $PHASE in
    both | train | test) ;;
    *) echo "base2new.sh: PHASE must be both, train or test (got '$PHASE')" >&2; exit 2 ;;
esac
if [[ -f $TRAIN_DIR/results.json && -f $TEST_DIR/results.json ]]; then
    echo "Done already: $METHOD $DATASET seed $SEED ($TRAIN_DIR, $TEST_DIR)"
    exit 0
fi

if [[ ${#RUNNER[@]} -gt 0 ]]; then  # methods with their own pipeline (DPC's two stages)
    [[ $PHASE == both ]] || { echo "base2new.sh: $METHOD runs all its stages at once (no PHASE)" >&2; exit 2; }
    CFG=${CFG:-$CFG_NAME} exec bash "${RUNNER[@]}" "$DATASET" "$SEED" "${EXTRA[@]}"  # a YAML path stays a path
fi

COMMON=(--root "$DATA" --seed "$SEED" --trainer "$METHOD"
        --dataset-config-file "$DATASET_CONFIG" --config-file "$CONFIG_FILE")
IFS=, read -r -a MODULES <<< "$TRAINER_MODULE"
for module in "${MODULES[@]}"; do
    COMMON+=(--trainer-module "$module")
done
OPTS=("${METHOD_OPTS[@]}" "${EXTRA[@]}" DATASET.NUM_SHOTS "$SHOTS")

if [[ $PHASE == test ]]; then
    [[ -f $TRAIN_DIR/results.json || $EVAL_ONLY == 1 ]] || {
        echo "base2new.sh: train first (no $TRAIN_DIR/results.json)" >&2; exit 1; }
elif [[ -f $TRAIN_DIR/results.json ]]; then
    echo "Base phase done already: $TRAIN_DIR"
elif [[ $EVAL_ONLY == 1 ]]; then
    "$PYTHON" "$REPO/train.py" "${COMMON[@]}" --output-dir "$TRAIN_DIR" --eval-only \
        "${OPTS[@]}" DATASET.SUBSAMPLE_CLASSES base
else
    "$PYTHON" "$REPO/train.py" "${COMMON[@]}" --output-dir "$TRAIN_DIR" \
        "${OPTS[@]}" DATASET.SUBSAMPLE_CLASSES base
fi

if [[ $PHASE == train ]]; then
    exit 0
elif [[ -f $TEST_DIR/results.json ]]; then
    echo "New phase done already: $TEST_DIR"
elif [[ $EVAL_ONLY == 1 ]]; then
    "$PYTHON" "$REPO/train.py" "${COMMON[@]}" --output-dir "$TEST_DIR" --eval-only \
        "${OPTS[@]}" DATASET.SUBSAMPLE_CLASSES new
else
    "$PYTHON" "$REPO/train.py" "${COMMON[@]}" --output-dir "$TEST_DIR" --eval-only \
        --model-dir "$TRAIN_DIR" ${LOADEP:+--load-epoch "$LOADEP"} "${OPTS[@]}" DATASET.SUBSAMPLE_CLASSES new
fi
