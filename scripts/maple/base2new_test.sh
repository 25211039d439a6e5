#!/usr/bin/env bash
# MaPLe on the new classes, from the base-class run (the official base2new_test.sh):
#   bash scripts/maple/base2new_test.sh DATASET SEED [CFG] [KEY VALUE ...]
# Default CFG and environment (DATA, OUTPUT, SHOTS, LOADEP, ...): scripts/base2new.sh.
PHASE=test exec bash "$(dirname "${BASH_SOURCE[0]}")/../base2new.sh" MaPLe "$@"
