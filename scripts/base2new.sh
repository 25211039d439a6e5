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
exec "${PYTHON:-python}" "$(dirname "${BASH_SOURCE[0]}")/sweeps.py" base2new "$@"  # scripts/sweeps.py
