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
    "CoOp": 0.8,
    "CoOp:vit_b16_bs4_ep10_lr35": 0.2,  # CoOp as DPC's stage 1 (batch 4, 10 epochs, 4 tokens)
    "KgCoOp": 0.6,
    "MaPLe": 0.2,
    "DPL": 0.2,
    "DGPrompt": 0.9,
    "DPC_CoOp": 1.3,
    "DPC_KgCoOp": 1.3,
    "DPC_MaPLe": 2.2,
    "DPC_DPL": 2.2,
    "DPC_DGPrompt": 11.5,
}
