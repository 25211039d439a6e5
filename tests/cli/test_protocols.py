"""The few-shot and cross-dataset / domain-generalisation protocols end to end on CPU: scripts/launch.py,
scripts/fewshot.sh and scripts/xd.sh driving train.py on the tiny CLIP and the synthetic ImageNet (with
ImageNet-V2 and -A) and two small datasets, then parse_results.py.

Grids: few-shot (by the launcher) = zero-shot CLIP + CoOp x {Caltech101, EuroSAT} x K {1, 2} x seeds {1, 2};
cross-dataset (by xd.sh) = zero-shot CLIP + CoOp, source ImageNet (2 shots) x seeds {1, 2}, targets
Caltech101, EuroSAT, ImageNet-V2, ImageNet-A. Then DPC on CoOp in both protocols (the launcher starting an
evaluation after its source), and reruns after an interruption.
"""
import csv
import glob
import io
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import TINY_OPTS, make_data_root

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FEWSHOT = ["ZeroshotCLIP,CoOp", "caltech101,eurosat", "1,2"]
XD = ["ZeroshotCLIP,CoOp", "1,2", "caltech101,eurosat,imagenetv2,imagenet_a"]
TARGETS = ("caltech101", "eurosat", "imagenetv2", "imagenet_a")


def tiny(tiny_clip_path):
    # 2 epochs at a high learning rate: accuracies move away from chance and differ between seeds
    return [*TINY_OPTS, "OPTIM.MAX_EPOCH", "2", "OPTIM.LR", "0.05", "MODEL.BACKBONE.NAME", tiny_clip_path]


def run(args, env, check=True):
    result = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def results(run_dir):
    with open(os.path.join(run_dir, "results.json")) as f:
        return json.load(f)


def mean(values):
    return sum(values) / len(values)


def fewshot_dir(output, dataset, k, seed, method="CoOp", config=None):
    config = config or ("vit_b16_ep50" if k == 1 else "vit_b16_ep100")  # CoOp's few-shot configs by K
    return os.path.join(output, "few_shot", dataset, method, f"{config}_{k}shots", f"seed{seed}")


def source_dir(output, seed, method="CoOp", config="vit_b16_ep50_ctxv1"):
    return os.path.join(output, "imagenet", method, f"{config}_2shots", f"seed{seed}")


def target_dir(output, target, seed, method="CoOp", config="vit_b16_ep50_ctxv1"):
    return os.path.join(output, "evaluation", method, f"{config}_2shots", target, f"seed{seed}")


def zero_shot_dir(output, dataset):
    return os.path.join(output, "ZeroshotCLIP", "vit_b16", dataset)


def table(output, env, protocol):
    """{(method, dataset, shots): accuracy} from parse_results.py's CSV (the table's numbers, 2 decimals)."""
    out = run([sys.executable, "parse_results.py", str(output), "--protocol", protocol, "--format", "csv"], env).stdout
    return {(r["method"], r["dataset"], int(r["shots"])): float(r["accuracy"]) if r["accuracy"] else None
            for r in csv.DictReader(io.StringIO(out))}


def files_under(root):
    return {p: os.path.getmtime(p) for p in glob.glob(os.path.join(root, "**", "*"), recursive=True)
            if os.path.isfile(p) and "launch_logs" not in p}


@pytest.fixture(scope="module")
def grids(tmp_path_factory, tiny_clip_path):
    """The few-shot grid by the launcher (2 runs at a time on the CPU), then the cross-dataset grid by xd.sh."""
    data = make_data_root(tmp_path_factory, "ImageNet", "Caltech101", "EuroSAT", "ImageNetV2", "ImageNetA")
    output = tmp_path_factory.mktemp("protocols") / "output"
    env = {**os.environ, "DATA": data, "OUTPUT": str(output), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    options = ["--gpus", "none", "--jobs", "2", *tiny(tiny_clip_path)]
    few = run([sys.executable, "scripts/launch.py", *FEWSHOT, "--protocol", "fewshot", "--shots", "1,2", *options],
              env).stdout
    assert "10 runs in the grid: 0 done, 10 to run" in few and "Finished: 10 of 10 runs; 0 failed" in few
    env["SHOTS"] = "2"
    xd = run(["bash", "scripts/xd.sh", *XD, *tiny(tiny_clip_path)], env).stdout
    assert xd.count("Done already") == 2  # zero-shot CLIP on Caltech101 and EuroSAT, run for the few-shot table
    assert "=== [7-10/15] xd CoOp imagenet -> caltech101,eurosat,imagenetv2,imagenet_a seed 1" in xd  # one process
    assert "=== xd: 15 of 15 runs finished" in xd
    return output, env


def test_fewshot_runs_and_table(grids):
    output, env = grids
    cells = table(output, env, "fewshot")
    for k in (1, 2):
        per_dataset = []
        for dataset in ("caltech101", "eurosat"):
            runs = [results(fewshot_dir(output, dataset, k, seed)) for seed in (1, 2)]
            assert all(r["num_shots"] == k and r["subsample"] == "all" and r["num_classes"] == (5 if dataset ==
                       "caltech101" else 10) for r in runs)  # every class, K shots each
            per_dataset.append(mean([r["accuracy"] for r in runs]))
            assert cells[("CoOp", dataset, k)] == pytest.approx(per_dataset[-1], abs=0.005)
        assert cells[("CoOp", "average", k)] == pytest.approx(mean(per_dataset), abs=0.005)
    zero_shot = [results(zero_shot_dir(output, d))["accuracy"] for d in ("caltech101", "eurosat")]
    assert cells[("ZeroshotCLIP", "average", 0)] == pytest.approx(mean(zero_shot), abs=0.005)
    with open(os.path.join(fewshot_dir(output, "eurosat", 2, 1), "config.yaml")) as f:
        config = f.read()
    assert "MAX_EPOCH: 2" in config and "N_CTX: 16" in config  # CoOp's 16 random tokens; the tiny schedule


def test_cross_dataset_runs_and_tables(grids):
    output, env = grids
    for seed in (1, 2):
        checkpoint = os.path.join(source_dir(output, seed), "prompt_learner", "model.pth.tar-2")
        assert results(source_dir(output, seed))["num_classes"] == 5  # the tiny ImageNet's classes, all of them
        for target in TARGETS:
            with open(os.path.join(target_dir(output, target, seed), "log.txt")) as f:
                assert f'Loading weights to prompt_learner from "{checkpoint}"' in f.read()
    for protocol, targets in (("xd", TARGETS[:2]), ("dg", TARGETS[2:])):
        cells = table(output, env, protocol)
        imagenet = mean([results(source_dir(output, s))["accuracy"] for s in (1, 2)])
        assert cells[("CoOp", "imagenet", 2)] == pytest.approx(imagenet, abs=0.005)
        means = [mean([results(target_dir(output, t, s))["accuracy"] for s in (1, 2)]) for t in targets]
        for target, value in zip(targets, means):
            assert cells[("CoOp", target, 2)] == pytest.approx(value, abs=0.005)
        assert cells[("CoOp", "average", 2)] == pytest.approx(mean(means), abs=0.005)  # ImageNet left out
        zero_shot = [results(zero_shot_dir(output, t))["accuracy"] for t in targets]
        assert cells[("ZeroshotCLIP", "average", 0)] == pytest.approx(mean(zero_shot), abs=0.005)
    assert "15 runs: 15 done" in run([sys.executable, "scripts/launch.py", XD[0], XD[2], XD[1], "--protocol", "xd",
                                      "--shots", "2", "--status"], env).stdout


def test_dpc_in_both_protocols_reuses_its_backbone_runs(grids, tiny_clip_path):
    output, env = grids
    launched = run([sys.executable, "scripts/launch.py", "DPC_CoOp", "imagenet_a", "1", "--protocol", "xd",
                    "--shots", "2", "--gpus", "none", "--jobs", "2", *tiny(tiny_clip_path)], env).stdout
    assert "Finished: 2 of 2 runs; 0 failed" in launched  # the evaluation waited for its source
    with open(glob.glob(os.path.join(output, "launch_logs", "xd-DPC_CoOp-*imagenet-seed1.log"))[0]) as f:
        assert f"Done already: xd CoOp/vit_b16_ep50_ctxv1_2shots imagenet seed1 ({source_dir(output, 1)})" in f.read()
    # the released name rule: a target (not "ImageNet") gets P at ω_n = 0, i.e. exactly the CoOp backbone
    dpc, coop = results(target_dir(output, "imagenet_a", 1, "DPC_CoOp", "vit_b16_ep20")), \
        results(target_dir(output, "imagenet_a", 1))
    assert (dpc["correct"], dpc["macro_f1"]) == (coop["correct"], coop["macro_f1"])
    few = run(["bash", "scripts/fewshot.sh", "DPC_CoOp", "caltech101", "1", "1", *tiny(tiny_clip_path)], env).stdout
    assert "Done already: fewshot CoOp/vit_b16_ep50_1shots caltech101 seed1" in few
    stage2 = fewshot_dir(output, "caltech101", 1, 1, "DPC_CoOp", "vit_b16_ep20")
    with open(os.path.join(stage2, "config.yaml")) as f:
        config = f.read()
    assert "N_CTX: 16" in config and fewshot_dir(output, "caltech101", 1, 1) in config  # stage 1's prompt settings
    out = run([sys.executable, "parse_results.py", str(output), "--protocol", "xd"], env).stdout
    assert "CoOp + DPC [all-classes prompt: reference]" in out


def test_reruns_skip_finished_runs_and_redo_only_interrupted_ones(grids, tiny_clip_path):
    output, env = grids
    fewshot = ["bash", "scripts/fewshot.sh", *FEWSHOT, "1,2", *tiny(tiny_clip_path)]
    xd = ["bash", "scripts/xd.sh", *XD, *tiny(tiny_clip_path)]
    before = files_under(output)
    assert run(fewshot, env).stdout.count("Done already") == 10
    assert run(xd, env).stdout.count("Done already") == 15
    assert files_under(output) == before  # nothing ran, nothing was touched

    # Two runs interrupted before their final test: a few-shot run and a cross-dataset source.
    interrupted = [fewshot_dir(output, "eurosat", 2, 2), source_dir(output, 2)]
    for run_dir in interrupted:
        os.remove(os.path.join(run_dir, "results.json"))
    blocked = run(["bash", "scripts/xd.sh", "CoOp", "2", "dtd", *tiny(tiny_clip_path)],  # a new target
                  {**env, "PHASE": "test"}, check=False)
    assert blocked.returncode == 1 and f"cannot evaluate CoOp seed 2 on dtd: its source run " \
        f"{source_dir(output, 2)} is missing or unfinished" in blocked.stderr
    assert "finish it first: bash scripts/xd.sh CoOp 2 none" in blocked.stderr
    before = files_under(output)
    run(fewshot, env)
    run(xd, env)
    after = files_under(output)
    changed = {os.path.dirname(p) for p in set(after) ^ set(before) | {p for p in before if after.get(p) != before[p]}}
    assert changed == set(interrupted)  # a rerun log and results.json each; the targets were left alone
    for run_dir in interrupted:
        with open(glob.glob(os.path.join(run_dir, "log.txt-*"))[0]) as f:
            assert "Previous epoch: 2" in f.read()  # resumed from the finished training: tested, not retrained
