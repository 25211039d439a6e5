#!/usr/bin/env bash
# CoOp on the new classes, from the base-class run (the official base2new_test.sh):
#   bash scripts/coop/base2new_test.sh DATASET SEED [CFG] [KEY VALUE ...]
# Default CFG and environment (DATA, OUTPUT, SHOTS, LOADEP, ...): scripts/base2new.sh.
PHASE=test exec bash "$(dirname "${BASH_SOURCE[0]}")/../base2new.sh" CoOp "$@"
