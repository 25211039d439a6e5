"""scripts/demo.sh, the README's first command: synthetic data and a random tiny CLIP through the
real launcher, base2new.sh (CoOp) and DPC's runner (DPC_CoOp), then the table."""
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def demo(directory):
    result = subprocess.run(["bash", "scripts/demo.sh", str(directory)], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_demo_runs_the_pipeline_and_prints_the_table(tmp_path):
    out = demo(tmp_path / "demo")
    assert "4 runs in the grid: 0 done, 4 to run" in out and "Finished: 4 of 4 runs; 0 failed" in out
    for title in ("### CoOp (vit_b16_ctxv1, 16 shots)", "### CoOp + DPC (vit_b16_ep20, 16 shots)",
                  "### Averages (H = HM of the averaged Base and New)"):
        assert title in out
    seeds = [line.split("|")[5].strip() for line in out.splitlines() if line.startswith("| Caltech101")]
    assert seeds == ["2", "2", "2"]  # CoOp, DPC's stage-1 CoOp and DPC_CoOp, both seeds each
    assert "These numbers are MEANINGLESS" in out and "python parse_results.py output/ --compare-paper" in out

    again = demo(tmp_path / "demo")  # finished runs are skipped
    assert "4 runs in the grid: 4 done, 0 to run" in again and "Launching" not in again
