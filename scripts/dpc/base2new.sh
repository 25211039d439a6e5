#!/usr/bin/env bash
# DPC on one backbone, dataset and seed (docs/methods/dpc.md): stage 1 (the backbone's own
# base-to-new run), stage 2 (DPC_<BACKBONE> on the base classes; its final test is the base
# accuracy) and the new-class evaluation.
#
#   bash scripts/dpc/base2new.sh BACKBONE DATASET SEED [KEY VALUE ...]
#
#   BACKBONE   CoOp | KgCoOp | MaPLe | DPL | DGPrompt | IVLP | PromptSRC | PromptKD (any backbone with a
#              DPC_<BACKBONE> trainer)
#   DATASET    dataset config stem: imagenet, caltech101, oxford_pets, ... (configs/datasets/)
#   KEY VALUE  config options for every stage (TRAINER.DPC.* only matter to stage 2); a finished
#              stage 1 is reused whatever they are: keep variants apart with BACKBONE_CFG or TAG
#
# Environment: DATA (dataset root, default data), OUTPUT (default output), SHOTS (default 16),
# CFG (stage-2 config under configs/trainers/DPC/BACKBONE/, or a YAML path; default vit_b16_ep20,
# PromptKD vit_b16_c2_ep20_batch4_4+4ctx), TAG (appended to the stage-2 folder as CFG_TAG),
# BACKBONE_CFG (stage-1 config; default the DPC setting for CoOp (batch 4, 10 epochs, 4 random
# tokens), vit_b16_c2_ep20_batch4_4+4ctx for IVLP and PromptSRC, for PromptKD DPC's batch-32 run
# (shots_0, KD_WEIGHT 1000), the backbone's paper config otherwise), TRAINER_MODULE,
# PYTHON (default python). PromptKD's teacher must be in place (TRAINER.PROMPTKD.TEACHER_* options).
#
# Output: stage 1 as scripts/base2new.sh writes it ($OUTPUT/base2new/{train_base,test_new}/
# DATASET/shots_$SHOTS/BACKBONE/BACKBONE_CFG/seed$SEED; CoOp's folder is tagged _nctx4), then
# $OUTPUT/base2new/train_base/.../DPC_BACKBONE/CFG/seed$SEED (base) and test_new/... (new).
# A stage is done when its results.json exists: finished stages (a finished stage 1 of another
# sweep included) are skipped, an interrupted one resumes.
exec "${PYTHON:-python}" "$(dirname "${BASH_SOURCE[0]}")/../sweeps.py" dpc "$@"  # scripts/sweeps.py
