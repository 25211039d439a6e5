#!/usr/bin/env bash
# Run a base-to-new grid one run after another (scripts/launch.py spreads it over GPUs or Slurm).
#
#   bash scripts/sweep.sh METHODS DATASETS SEEDS [KEY VALUE ...]
#
#   METHODS    comma list or `all` (every method with a paper config); METHOD:CFG picks a config
#   DATASETS   comma list of dataset config stems, or `all` (the 11 datasets)
#   SEEDS      comma list, or `all` (1,2,3)
#   KEY VALUE  config options for every run
#
# Same environment as scripts/base2new.sh (DATA, OUTPUT, SHOTS, TAG, TRAINER_MODULE, PYTHON).
# Finished runs are skipped, interrupted ones resume; a failed run does not stop the sweep.
# Example: bash scripts/sweep.sh CoOp,KgCoOp all all && python parse_results.py output/
exec "${PYTHON:-python}" "$(dirname "${BASH_SOURCE[0]}")/sweeps.py" sweep "$@"  # scripts/sweeps.py
