from scripts.cost_estimates import GRID_HOURS
from scripts.methods import DPC_STAGE1, METHODS


def test_every_trained_method_and_dpc_stage1_has_a_grid_estimate():
    """`launch.py --recipe NAME --dry-run` shows hours for every built-in method, DPC's stage-1 re-runs included."""
    trained = {name for name, method in METHODS.items() if not method.eval_only}
    assert trained <= set(GRID_HOURS), f"no grid-hour estimate for {sorted(trained - set(GRID_HOURS))}"
    assert set(DPC_STAGE1) <= set(GRID_HOURS)
    assert "CoOp:" + DPC_STAGE1["CoOp"].config in GRID_HOURS  # its own config costs otherwise than CoOp's
    assert all(hours > 0 for hours in GRID_HOURS.values())
