"""The CUDA paths users run (fp16 weights, amp with a GradScaler, bf16 autocast, pinned memory),
end to end through `train.py` on the tiny CLIP. Skipped on machines without a CUDA GPU."""
import json
import os

import pytest
import torch

import train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CONFIGS = {"CoOp": ("CoOp/vit_b16_ep50.yaml", "COOP", ["TRAINER.COOP.N_CTX", "4"]),
           "MaPLe": ("MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml", "MAPLE", ["TRAINER.MAPLE.PROMPT_DEPTH", "2"])}


@pytest.mark.parametrize("prec", ["fp16", "amp", "bf16"])
@pytest.mark.parametrize("trainer", ["CoOp", "MaPLe"])
def test_train_and_test_on_the_gpu(data_root, tiny_clip_path, tiny_opts, tmp_path, trainer, prec):
    config, node, opts = CONFIGS[trainer]
    train.main(["--root", data_root, "--seed", "1", "--trainer", trainer, "--backbone", tiny_clip_path,
                "--dataset-config-file", os.path.join(REPO, "configs", "datasets", "caltech101.yaml"),
                "--config-file", os.path.join(REPO, "configs", "trainers", config), "--output-dir", str(tmp_path),
                *tiny_opts, *opts, f"TRAINER.{node}.PREC", prec, "DATASET.NUM_SHOTS", "2", "OPTIM.MAX_EPOCH", "2",
                "DATASET.SUBSAMPLE_CLASSES", "base"])
    log = (tmp_path / "log.txt").read_text()
    assert "running in fp32" not in log  # no CPU fallback (a NaN loss would have raised)
    with open(tmp_path / "results.json") as f:
        assert json.load(f)["total"] > 0
