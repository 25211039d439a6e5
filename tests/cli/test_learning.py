"""Training actually learns: on the Caltech101 fixture (one solid colour per class) the tiny
random CLIP is at chance zero-shot, and MaPLe's prompts make it discriminate the classes."""
import re

from tests.helpers.cli import read_results, run_train


def accuracy(data_root, tiny_clip_path, tiny_opts, output_dir, trainer, config, *flags, opts=()):
    run_train(data_root, tiny_clip_path, tiny_opts, trainer, config, output_dir, *flags,
              opts=["DATASET.NUM_SHOTS", "4", "DATASET.SUBSAMPLE_CLASSES", "all", *opts])
    return read_results(output_dir)["accuracy"]


def test_maple_learns_the_fixture_classes(data_root, tiny_clip_path, tiny_opts, tmp_path):
    zero_shot = accuracy(data_root, tiny_clip_path, tiny_opts, tmp_path / "zs", "ZeroshotCLIP", "CoOp/vit_b16.yaml",
                         "--eval-only")
    trained = accuracy(data_root, tiny_clip_path, tiny_opts, tmp_path / "maple", "MaPLe",
                       "MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml",
                       opts=["TRAINER.MAPLE.PROMPT_DEPTH", "3", "OPTIM.MAX_EPOCH", "20", "OPTIM.LR", "0.02"])
    assert zero_shot <= 40.0  # 5 classes: chance is 20%
    assert trained >= 80.0
    losses = [float(v) for v in re.findall(r" loss \d+\.\d+ \((\d+\.\d+)\)", (tmp_path / "maple" / "log.txt").read_text())]
    assert losses[-1] < losses[0] / 2  # the epoch-average loss falls
