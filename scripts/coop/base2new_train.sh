#!/usr/bin/env bash
# CoOp on the base classes (the official base2new_train.sh):
#   bash scripts/coop/base2new_train.sh DATASET SEED [CFG] [KEY VALUE ...]
# Default CFG and environment (DATA, OUTPUT, SHOTS, ...): scripts/base2new.sh.
PHASE=train exec bash "$(dirname "${BASH_SOURCE[0]}")/../base2new.sh" CoOp "$@"
