#!/usr/bin/env bash
# The whole pipeline in about a minute on a CPU: data -> base-to-new sweep -> paper table.
#
#   bash scripts/demo.sh [DIR]        (default DIR: output/demo)
#
# Writes a synthetic Caltech101 (the real on-disk format, tests/helpers/fixtures.py) and a tiny
# CLIP with RANDOM weights (tests/helpers/tiny_clip.py) under DIR, runs the real scripts
# (scripts/launch.py -> scripts/base2new.sh -> train.py) for DEMO_METHODS (default CoOp,DPC_CoOp)
# over seeds 1 and 2 with a tiny schedule, then prints the table with parse_results.py.
# The numbers mean nothing. Finished runs are skipped on a second call; delete DIR to start over.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${1:-output/demo}
PYTHON=${PYTHON:-python}
METHODS=${DEMO_METHODS:-CoOp,DPC_CoOp}
export PYTHON OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # two small runs at a time share the cores

echo "== 1/3 Synthetic data and a tiny random CLIP in $DIR"
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)  # absolute: the generators run from the repository, the sweep from here
(cd "$REPO" && "$PYTHON" -m tests.helpers.fixtures "$DIR/data" --datasets Caltech101 > /dev/null)
[[ -f $DIR/tiny_clip.pt ]] || (cd "$REPO" && "$PYTHON" -m tests.helpers.tiny_clip "$DIR/tiny_clip.pt" > /dev/null)

# The tiny model's input size, no loader workers, 2 epochs, small batches (CPU, seconds per run).
TINY=(MODEL.BACKBONE.NAME "$DIR/tiny_clip.pt" INPUT.SIZE "(32, 32)" DATALOADER.NUM_WORKERS 0
      OPTIM.MAX_EPOCH 2 DATALOADER.TRAIN_X.BATCH_SIZE 4 DATALOADER.TEST.BATCH_SIZE 20 TRAIN.PRINT_FREQ 5)

echo "== 2/3 Base-to-new sweep: $METHODS x caltech101 x seeds 1,2 (console logs: $DIR/output/launch_logs)"
"$PYTHON" "$REPO/scripts/launch.py" "$METHODS" caltech101 1,2 --data "$DIR/data" --output "$DIR/output" \
    --gpus none --jobs 2 "${TINY[@]}"

echo "== 3/3 The table"
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
