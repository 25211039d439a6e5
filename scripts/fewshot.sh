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
exec "${PYTHON:-python}" "$(dirname "${BASH_SOURCE[0]}")/sweeps.py" fewshot "$@"  # scripts/sweeps.py
