"""scripts/demo.sh, the README's first command: synthetic data and a random tiny CLIP through the
real launcher, base2new.sh (CoOp) and DPC's runner (DPC_CoOp), then the table; and its `all` plan,
every registered trainer at its unmodified paper config."""
import os
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def demo(directory):
    result = subprocess.run(["bash", "scripts/demo.sh", str(directory)], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.slow
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


# What the demo may change on the command line: what fits a paper config to a tiny CPU run, and where
# PromptKD's teacher is.
TINY_MACHINE_KEYS = {"MODEL.BACKBONE.NAME", "INPUT.SIZE", "DATALOADER.NUM_WORKERS", "OPTIM.MAX_EPOCH",
                     "DATALOADER.TRAIN_X.BATCH_SIZE", "DATALOADER.TEST.BATCH_SIZE", "TRAIN.PRINT_FREQ",
                     "TRAINER.PROMPTKD.TEACHER_NAME", "TRAINER.PROMPTKD.TEACHER_CKPT"}


def test_all_runs_every_registered_trainer_at_its_paper_config(tmp_path):
    from engine.registry import TRAINERS

    result = subprocess.run(["bash", "scripts/demo.sh", str(tmp_path / "demo")], cwd=REPO, capture_output=True,
                            text=True, env={**os.environ, "PYTHON": sys.executable, "DEMO_METHODS": "all",
                                            "DEMO_DRY_RUN": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    commands = [shlex.split(line) for line in result.stdout.splitlines() if line.startswith("bash ")]
    methods = {command[2] for command in commands}
    assert all(name in TRAINERS for name in methods)
    assert {TRAINERS.get(name) for name in methods} == {TRAINERS.get(name) for name in TRAINERS.names()}
    assert len(commands) == 2 * len(methods)  # seeds 1 and 2
    for command in commands:
        script, method, dataset, seed, *opts = command[1:]
        assert script == os.path.join(REPO, "scripts", "base2new.sh") and dataset == "caltech101"
        assert set(opts[0::2]) == TINY_MACHINE_KEYS, command  # no CFG argument: the paper config, unmodified


def test_the_demo_clips_are_deep_enough_for_every_paper_config(tmp_path):
    """Every prompt depth of the methods' paper configs (and PromptKD's teacher config) fits both demo CLIPs."""
    import yaml

    from engine.clip_loading import load_clip_to_cpu
    from scripts.methods import METHODS, default_config_file
    from tests.helpers.tiny_clip import SIZES, make_tiny_clip
    from trainers.deep_prompting import tower_sizes

    config_files = [default_config_file(method, entry) for method, entry in METHODS.items()]
    config_files.append(os.path.join(REPO, "configs", "trainers", "PromptSRC", "vit_l14_c2_ep20_batch8_4+4ctx.yaml"))
    depths = []
    for config_file in config_files:
        with open(config_file) as f:
            for node in (yaml.safe_load(f).get("TRAINER") or {}).values():
                depths += [value for key, value in node.items() if "DEPTH" in key]
    assert max(depths) == 9
    sizes = tower_sizes(load_clip_to_cpu(make_tiny_clip(tmp_path / "deep.pt", size="deep")))  # the real loader
    assert min(sizes.text_layers, sizes.vision_layers) >= max(depths)
    teacher = SIZES["deep-wide"]
    assert min(teacher["transformer_layers"], teacher["vision_layers"]) >= max(depths)
