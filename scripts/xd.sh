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
exec "${PYTHON:-python}" "$(dirname "${BASH_SOURCE[0]}")/sweeps.py" xd "$@"  # scripts/sweeps.py
