#!/usr/bin/env bash
# The whole pipeline on a CPU: data -> base-to-new sweep -> paper table.
#
#   bash scripts/demo.sh [DIR]                        (default DIR: output/demo)
#   DEMO_METHODS=all bash scripts/demo.sh [DIR]       every method of scripts/methods.py
#   DEMO_METHODS=MaPLe,DPL bash scripts/demo.sh [DIR] any comma list of them
#   DEMO_DRY_RUN=1 bash scripts/demo.sh [DIR]         print the sweep's commands, run nothing
#
# Writes a synthetic Caltech101 (the real on-disk format, tests/helpers/fixtures.py) and a tiny
# CLIP with RANDOM weights (tests/helpers/tiny_clip.py --size deep: 12 thin layers per tower, as
# deep as ViT-B/16, so every method runs its own paper config, depth-9 prompts included) under
# DIR, runs the real scripts (scripts/launch.py -> scripts/base2new.sh or scripts/dpc/base2new.sh
# -> train.py) for DEMO_METHODS (default CoOp,DPC_CoOp) over seeds 1 and 2, then prints the
# tables with parse_results.py; the last one, "Averages", has one row per method and config.
# Each method runs its paper config file unmodified; the command line only fits it to a tiny
# CPU run: the tiny CLIP and its 32x32 input, no loader workers, 2 epochs, small batches.
# PromptKD and DPC_PromptKD distil from a teacher, which the demo trains first as the official
# teachers were made: PromptSRC with its ViT-L/14 teacher config, here on a wider tiny CLIP
# (--size deep-wide), on the base classes (DIR/teacher/caltech101).
# The numbers mean nothing. Finished runs are skipped on a second call; delete DIR to start over.
#
# Measured on the quiet 2-core development machine (no GPU): the default 38 s, DEMO_METHODS=all
# (17 methods x 2 seeds = 34 launched runs, plus the teacher) 3 min 28 s.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${1:-output/demo}
PYTHON=${PYTHON:-python}
METHODS=${DEMO_METHODS:-CoOp,DPC_CoOp}
DRY_RUN=${DEMO_DRY_RUN:-}
export PYTHON OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # two small runs at a time share the cores

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)  # absolute: the generators run from the repository, the sweep from here
CLIP=$DIR/tiny_clip_deep.pt
TEACHER_CLIP=$DIR/tiny_clip_deep_wide.pt
TEACHER_DIR=$DIR/teacher/caltech101

# The tiny model's input size, no loader workers, 2 epochs, small batches (CPU, seconds per run).
# The PromptKD keys only matter to PromptKD and DPC_PromptKD; every run gets them, so that a later
# call with other DEMO_METHODS finds the same configuration in the run folders.
TINY=(INPUT.SIZE "(32, 32)" DATALOADER.NUM_WORKERS 0 OPTIM.MAX_EPOCH 2 DATALOADER.TRAIN_X.BATCH_SIZE 4
      DATALOADER.TEST.BATCH_SIZE 20 TRAIN.PRINT_FREQ 5)
TEACHER=(TRAINER.PROMPTKD.TEACHER_NAME "$TEACHER_CLIP" TRAINER.PROMPTKD.TEACHER_CKPT "$TEACHER_DIR")
LAUNCH=("$PYTHON" "$REPO/scripts/launch.py" "$METHODS" caltech101 1,2 --data "$DIR/data" --output "$DIR/output"
        --gpus none --jobs 2 MODEL.BACKBONE.NAME "$CLIP" "${TINY[@]}" "${TEACHER[@]}")
if [[ -n $DRY_RUN ]]; then
    "${LAUNCH[@]}" --dry-run
    exit 0
fi

echo "== 1/3 Synthetic data and tiny random CLIPs in $DIR"
(cd "$REPO" && "$PYTHON" -m tests.helpers.fixtures "$DIR/data" --datasets Caltech101 > /dev/null)
[[ -f $CLIP ]] || (cd "$REPO" && "$PYTHON" -m tests.helpers.tiny_clip "$CLIP" --size deep > /dev/null)
if [[ $METHODS == all || ,$METHODS, == *PromptKD[,:]* ]]; then
    [[ -f $TEACHER_CLIP ]] ||
        (cd "$REPO" && "$PYTHON" -m tests.helpers.tiny_clip "$TEACHER_CLIP" --size deep-wide --seed 1 > /dev/null)
    if [[ ! -f $TEACHER_DIR/results.json ]]; then
        echo "   PromptKD's teacher: PromptSRC (vit_l14_c2_ep20_batch8_4+4ctx) on the base classes -> $TEACHER_DIR"
        mkdir -p "$TEACHER_DIR"
        "$PYTHON" "$REPO/train.py" --root "$DIR/data" --seed 1 --trainer PromptSRC \
            --dataset-config-file "$REPO/configs/datasets/caltech101.yaml" \
            --config-file "$REPO/configs/trainers/PromptSRC/vit_l14_c2_ep20_batch8_4+4ctx.yaml" \
            --output-dir "$TEACHER_DIR" MODEL.BACKBONE.NAME "$TEACHER_CLIP" "${TINY[@]}" \
            DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES base > "$DIR/teacher/caltech101.log" 2>&1 ||
            { tail -n 20 "$DIR/teacher/caltech101.log" >&2; exit 1; }
    fi
fi

echo "== 2/3 Base-to-new sweep: $METHODS x caltech101 x seeds 1,2 (console logs: $DIR/output/launch_logs)"
"${LAUNCH[@]}"

echo "== 3/3 The tables"
"$PYTHON" "$REPO/parse_results.py" "$DIR/output"

cat <<EOF
!! These numbers are MEANINGLESS: random CLIP weights, synthetic 32x32 images, 2 epochs.
!! They only show that every step ran: data, few-shot sampling, base training, checkpoints,
!! new-class evaluation, results.json, and the table (H of each average = HM of averaged B and N).

The same pipeline on the real datasets with CLIP ViT-B/16 (weights download on first use):
  python scripts/prepare_data.py all --root /path/to/data   # download and lay out the datasets
  DATA=/path/to/data bash scripts/sweep.sh $METHODS all all            # one run after another
  python scripts/launch.py $METHODS all all --data /path/to/data --gpus 0,1,2,3   # or in parallel
  python parse_results.py output/ --compare-paper
EOF
