#!/usr/bin/env bash
# DPC on one backbone, dataset and seed (docs/methods/dpc.md): stage 1 (the backbone's own
# base-to-new run), stage 2 (DPC_<BACKBONE> on the base classes; its final test is the base
# accuracy) and the new-class evaluation.
#
#   bash scripts/dpc/base2new.sh BACKBONE DATASET SEED [KEY VALUE ...]
#
#   BACKBONE   CoOp | KgCoOp | MaPLe | DPL | DGPrompt | IVLP | PromptSRC | PromptKD (any backbone with a
#              DPC_<BACKBONE> trainer)
#   DATASET    dataset config stem: imagenet, caltech101, oxford_pets, ... (configs/datasets/)
#   KEY VALUE  config options for every stage (TRAINER.DPC.* only matter to stage 2); a finished
#              stage 1 is reused whatever they are: keep variants apart with BACKBONE_CFG or TAG
#
# Environment: DATA (dataset root, default data), OUTPUT (default output), SHOTS (default 16),
# CFG (stage-2 config under configs/trainers/DPC/BACKBONE/, or a YAML path; default vit_b16_ep20,
# PromptKD vit_b16_c2_ep20_batch4_4+4ctx), TAG (appended to the stage-2 folder as CFG_TAG),
# BACKBONE_CFG (stage-1 config; default the DPC setting for CoOp (batch 4, 10 epochs, 4 random
# tokens), vit_b16_c2_ep20_batch4_4+4ctx for IVLP and PromptSRC, for PromptKD DPC's batch-32 run
# (shots_0, KD_WEIGHT 1000), the backbone's paper config otherwise), TRAINER_MODULE,
# PYTHON (default python). PromptKD's teacher must be in place (TRAINER.PROMPTKD.TEACHER_* options).
#
# Output: stage 1 as scripts/base2new.sh writes it ($OUTPUT/base2new/{train_base,test_new}/
# DATASET/shots_$SHOTS/BACKBONE/BACKBONE_CFG/seed$SEED; CoOp's folder is tagged _nctx4), then
# $OUTPUT/base2new/train_base/.../DPC_BACKBONE/CFG/seed$SEED (base) and test_new/... (new).
# A stage is done when its results.json exists: finished stages (a finished stage 1 of another
# sweep included) are skipped, an interrupted one resumes.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export DATA=${DATA:-data} OUTPUT=${OUTPUT:-output} SHOTS=${SHOTS:-16}
export PYTHON=${PYTHON:-python} TRAINER_MODULE=${TRAINER_MODULE:-}
TAG=${TAG:-} CFG=${CFG:-}

if [[ $# -lt 3 ]]; then
    sed -n '2,26p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 2
fi
BACKBONE=$1 DATASET=$2 SEED=$3
shift 3
EXTRA=("$@")
if [[ -z $CFG ]]; then
    [[ $BACKBONE == PromptKD ]] && CFG=vit_b16_c2_ep20_batch4_4+4ctx || CFG=vit_b16_ep20
fi

# Stage 1: the backbone's own run, reused when it is finished. CoOp's DPC setting (the DPC
# repo's batch-4, 10-epoch config with 4 random context tokens) gets its own folder tag.
BACKBONE_CFG=${BACKBONE_CFG:-}
STAGE1_OPTS=()
STAGE1_TAG=""
STAGE1_SHOTS=$SHOTS
if [[ $BACKBONE == CoOp && -z $BACKBONE_CFG ]]; then
    BACKBONE_CFG=vit_b16_bs4_ep10_lr35
    STAGE1_OPTS=(TRAINER.COOP.N_CTX 4)
    STAGE1_TAG=nctx4
elif [[ ($BACKBONE == IVLP || $BACKBONE == PromptSRC) && -z $BACKBONE_CFG ]]; then
    BACKBONE_CFG=vit_b16_c2_ep20_batch4_4+4ctx  # the paper's base-to-new config
fi
if [[ $BACKBONE == PromptKD ]]; then  # DPC's PromptKD stage 1: unlabelled all-class distillation
    BACKBONE_CFG=${BACKBONE_CFG:-vit_b16_c2_ep20_batch32_4+4ctx}
    STAGE1_OPTS=(TRAINER.PROMPTKD.KD_WEIGHT 1000.0)
    STAGE1_SHOTS=0
fi
SHOTS=$STAGE1_SHOTS TAG=$STAGE1_TAG bash "$REPO/scripts/base2new.sh" "$BACKBONE" "$DATASET" "$SEED" \
    ${BACKBONE_CFG:+"$BACKBONE_CFG"} "${STAGE1_OPTS[@]}" "${EXTRA[@]}"
stage1=$(SHOTS=$STAGE1_SHOTS TAG=$STAGE1_TAG "$PYTHON" "$REPO/scripts/methods.py" resolve "$BACKBONE" "$DATASET" "$SEED" \
         "$BACKBONE_CFG")
STAGE1_DIR=$(eval "$stage1" && echo "$TRAIN_DIR")

# Stages 2 and 3: DPC_<BACKBONE>, with P re-read from stage 1's latest checkpoint each time.
TRAINER=DPC_$BACKBONE
eval "$(TAG=$TAG "$PYTHON" "$REPO/scripts/methods.py" resolve "$TRAINER" "$DATASET" "$SEED" "$CFG")"
if [[ -z $CONFIG_FILE ]]; then
    CONFIG_FILE=$REPO/configs/trainers/DPC/$BACKBONE/$CFG.yaml
fi
if [[ ! -f $CONFIG_FILE ]]; then
    echo "dpc/base2new.sh: stage-2 config not found: $CONFIG_FILE" >&2
    exit 2
fi
COMMON=(--root "$DATA" --seed "$SEED" --trainer "$TRAINER"
        --dataset-config-file "$REPO/configs/datasets/$DATASET.yaml" --config-file "$CONFIG_FILE")
IFS=, read -r -a MODULES <<< "$TRAINER_MODULE"
for module in "${MODULES[@]}"; do
    COMMON+=(--trainer-module "$module")
done
# The run layout fixes the shots and the stage-1 folder; TRAINER.DPC.BACKBONE_EPOCH is the user's
# (default -1: the latest stage-1 checkpoint).
OPTS=("${EXTRA[@]}" DATASET.NUM_SHOTS "$SHOTS" TRAINER.DPC.BACKBONE_DIR "$STAGE1_DIR")

if [[ -f $TRAIN_DIR/results.json ]]; then
    echo "DPC stage 2 done already: $TRAIN_DIR"
else
    "$PYTHON" "$REPO/train.py" "${COMMON[@]}" --output-dir "$TRAIN_DIR" "${OPTS[@]}" DATASET.SUBSAMPLE_CLASSES base
fi
if [[ -f $TEST_DIR/results.json ]]; then
    echo "DPC new-class evaluation done already: $TEST_DIR"
else
    "$PYTHON" "$REPO/train.py" "${COMMON[@]}" --output-dir "$TEST_DIR" --eval-only --model-dir "$TRAIN_DIR" \
        "${OPTS[@]}" DATASET.SUBSAMPLE_CLASSES new
fi
