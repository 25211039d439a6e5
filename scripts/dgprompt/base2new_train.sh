#!/usr/bin/env bash
# DGPrompt (reconstructed) on the base classes (the official base2new_train.sh):
#   bash scripts/dgprompt/base2new_train.sh DATASET SEED [CFG] [KEY VALUE ...]
# Default CFG and environment (DATA, OUTPUT, SHOTS, ...): scripts/base2new.sh.
PHASE=train exec bash "$(dirname "${BASH_SOURCE[0]}")/../base2new.sh" DGPrompt "$@"
