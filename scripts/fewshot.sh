#!/usr/bin/env bash
# Few-shot learning on all classes (CoOp's main protocol): every method trained with K shots of
# every class, with its own config for each K (scripts/methods.py), and tested on the full test split.
#
#   bash scripts/fewshot.sh METHODS DATASETS SEEDS [SHOTS] [KEY VALUE ...]
#
#   METHODS    comma list or `all` (every method with a few-shot setting); METHOD:CFG uses CFG (a
#              config name or YAML path) for every K
#   DATASETS   comma list of dataset config stems, or `all` (the 11 datasets)
#   SEEDS      comma list, or `all` (1,2,3)
#   SHOTS      comma list, or `all` (1,2,4,8,16; the default)
#   KEY VALUE  config options for every run
#
# Environment: DATA (dataset root, default data), OUTPUT (default output), TAG (a sub-folder below
# the config folder, to keep a variant's runs apart), TRAINER_MODULE (out-of-tree trainer file(s) or
# module(s), comma-separated), PYTHON (default python).
#
# Output: $OUTPUT/few_shot/DATASET/METHOD/CFG_Kshots[/TAG]/seedS. Zero-shot CLIP is evaluated once
# per dataset (no seed, no shots) into $OUTPUT/ZeroshotCLIP/CFG/DATASET. DPC_<BACKBONE> first runs
# (or reuses) the backbone's few-shot run of the same dataset, K and seed (stage 1), then trains
# stage 2 on it; its number is the end-of-training test.
# A run is done when its results.json exists: done runs are skipped, interrupted ones resume, a run
# is locked (flock) while it runs, and a failed run does not stop the others.
# Example: bash scripts/fewshot.sh CoOp,ZeroshotCLIP all all && python parse_results.py output/
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export DATA=${DATA:-data} OUTPUT=${OUTPUT:-output} TAG=${TAG:-}
export PYTHON=${PYTHON:-python} TRAINER_MODULE=${TRAINER_MODULE:-}
if [[ $# -lt 3 ]]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
    exit 2
fi
METHODS=$1 DATASETS=$2 SEEDS=$3
shift 3
SHOTS=all
if [[ $# -gt 0 && ! $1 =~ ^[A-Z][A-Z0-9_]*\. ]]; then  # config keys look like OPTIM.MAX_EPOCH
    SHOTS=$1
    shift
fi
EXTRA=("$@")
for ((i = 0; i < ${#EXTRA[@]}; i += 2)); do
    case ${EXTRA[i]} in
        DATASET.NUM_SHOTS | DATASET.SUBSAMPLE_CLASSES)
            echo "fewshot.sh: ${EXTRA[i]} is set by the script (give the shot counts as SHOTS)" >&2
            exit 2 ;;
    esac
done

# One run; called in a subshell with `set -e`, so any failing step fails the run.
run_one() {
    local method=$1 cfg=$2 dataset=$3 shots=$4 seed=$5 resolved
    resolved=$("$PYTHON" "$REPO/scripts/methods.py" fewshot "$method" "$dataset" "$shots" "$seed" --cfg "$cfg")
    eval "$resolved"  # CFG_NAME CONFIG_FILE RUN_DIR EVAL_ONLY BACKBONE STAGE1_DIR RUN_NAME METHOD_OPTS ...
    mkdir -p "$(dirname "$RUN_DIR")"
    if command -v flock > /dev/null; then  # a second caller waits here, then finds the run done
        exec 9> "$(dirname "$RUN_DIR")/.$(basename "$RUN_DIR").lock"
        flock 9
    fi
    if [[ -f $RUN_DIR/results.json ]]; then
        echo "Done already: $RUN_NAME ($RUN_DIR)"
        return 0
    fi
    local common=(--root "$DATA" --trainer "$method" --dataset-config-file "$REPO/configs/datasets/$dataset.yaml"
                  --config-file "$CONFIG_FILE" --output-dir "$RUN_DIR") module modules
    IFS=, read -r -a modules <<< "$TRAINER_MODULE"
    for module in "${modules[@]}"; do
        common+=(--trainer-module "$module")
    done
    if [[ $EVAL_ONLY == 1 ]]; then  # zero-shot CLIP: every class, the full test split, no seed
        "$PYTHON" "$REPO/train.py" "${common[@]}" --eval-only "${METHOD_OPTS[@]}" "${EXTRA[@]}"
        return 0
    fi
    local stage1=()
    if [[ -n $BACKBONE ]]; then  # DPC: the backbone's run of the same dataset, K and seed comes first
        TAG="" bash "$REPO/scripts/fewshot.sh" "$BACKBONE" "$dataset" "$seed" "$shots" "${EXTRA[@]}"
        stage1=(TRAINER.DPC.BACKBONE_DIR "$STAGE1_DIR")
    fi
    "$PYTHON" "$REPO/train.py" "${common[@]}" --seed "$seed" "${METHOD_OPTS[@]}" "${EXTRA[@]}" \
        DATASET.NUM_SHOTS "$shots" DATASET.SUBSAMPLE_CLASSES all "${stage1[@]}"
}

# The grid (checked before anything runs), one job per line: METHOD CFG DATASET SHOTS SEED.
grid=$("$PYTHON" "$REPO/scripts/methods.py" grid fewshot "$METHODS" "$DATASETS" "$SEEDS" --shots "$SHOTS") || exit 2
[[ -n $grid ]] || { echo "fewshot.sh: empty grid" >&2; exit 2; }
mapfile -t jobs <<< "$grid"
failed=()
count=0
for job in "${jobs[@]}"; do
    IFS=$'\t' read -r method cfg dataset shots seed <<< "$job"
    [[ $cfg == - ]] && cfg=""
    count=$((count + 1))
    echo "=== [$count/${#jobs[@]}] few-shot ${method}${cfg:+:$cfg} $dataset ${shots}-shot seed $seed"
    (set -e; run_one "$method" "$cfg" "$dataset" "$shots" "$seed")
    status=$?
    [[ $status -eq 0 ]] || failed+=("${method}${cfg:+:$cfg} $dataset ${shots}-shot seed $seed (exit $status)")
done

echo "=== few-shot: $((count - ${#failed[@]})) of $count runs finished"
if [[ ${#failed[@]} -gt 0 ]]; then
    printf 'failed: %s\n' "${failed[@]}"
    exit 1
fi
