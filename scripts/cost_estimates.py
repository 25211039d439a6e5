"""Device-hours of each method's full base-to-new grid (11 datasets x 3 seeds, 16 shots), as printed
by `benchmarks/grid_cost.py` (the README's Cost table): FLOPs counted on a CPU with ViT-B/16's
architecture, turned into hours at an assumed 100 TFLOP/s sustained. An estimate (FLOP-based, not
measured on a GPU) and a lower bound; replace these with grid_cost.py's "measured h" column from the
GPU the grid will run on. Keys: METHOD, or METHOD:CONFIG where a config of the method costs otherwise;
DPC rows are stage 2 only (stage 1 is the backbone's own row). Methods not listed have no estimate yet.
"""
LABEL = "estimate (FLOP-based, not measured on a GPU)"
GRID_RUNS = 33  # 11 datasets x 3 seeds
GRID_HOURS = {
    "CoOp": 0.7,
    "CoOp:vit_b16_bs4_ep10_lr35": 0.1,  # CoOp as DPC's stage 1 (batch 4, 10 epochs, 4 tokens)
    "KgCoOp": 0.5,
    "MaPLe": 0.1,
    "IVLP": 0.3,
    "PromptSRC": 0.4,
    "PromptKD": 52.6,  # 0 shots: every train image of every class, ViT-L/14 teacher forward per step
    "DPL": 0.2,
    "DGPrompt": 0.6,
    "DPC_CoOp": 1.1,
    "DPC_KgCoOp": 1.1,
    "DPC_MaPLe": 2.0,
    "DPC_IVLP": 2.0,
    "DPC_PromptSRC": 2.0,
    "DPC_PromptKD": 2.5,
    "DPC_DPL": 2.2,
    "DPC_DGPrompt": 5.6,
}
