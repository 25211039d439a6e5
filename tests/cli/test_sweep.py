"""The sweep scripts end to end on CPU: scripts/launch.py and scripts/sweep.sh driving
scripts/base2new.sh and train.py on the tiny CLIP and synthetic data, then parse_results.py.

The grid is 2 methods (CoOp and the out-of-tree examples/my_method.py) x 2 datasets x 2 seeds.
"""
import csv
import fcntl
import glob
import io
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import TINY_OPTS

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(REPO, "examples", "my_method.py")
METHODS = "CoOp,MyMethod:examples/MyMethod.yaml"
DATASETS = "caltech101,eurosat"

# A CoOp that dies hard in its second epoch on its first attempt, like a job killed by the scheduler.
CRASHING_TRAINER = '''
import os

from engine.registry import TRAINERS
from trainers.coop import CoOp


@TRAINERS.register("CrashOnceCoOp")
class CrashOnceCoOp(CoOp):
    def run_epoch(self):
        marker = os.path.join(self.output_dir, "crashed-once")
        if self.epoch == 1 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(137)  # no exception handling, no cleanup: as after SIGKILL
        super().run_epoch()
'''


def tiny(tiny_clip_path, epochs=1):
    return [*TINY_OPTS, "OPTIM.MAX_EPOCH", str(epochs), "MODEL.BACKBONE.NAME", tiny_clip_path]


def environment(data_root, output, **extra):
    return {**os.environ, "DATA": data_root, "OUTPUT": str(output), "SHOTS": "2", "PYTHON": sys.executable,
            "OMP_NUM_THREADS": "1", "TRAINER_MODULE": EXAMPLE, **extra}


def run(args, env, check=True):
    result = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def launch(env, *args, check=True):
    return run([sys.executable, "scripts/launch.py", *args], env, check)


def files_under(root):
    return {p: os.path.getmtime(p) for p in glob.glob(os.path.join(root, "**", "*"), recursive=True)
            if os.path.isfile(p) and "launch_logs" not in p}


def accuracy(run_dir):
    with open(os.path.join(run_dir, "results.json")) as f:
        return json.load(f)["accuracy"]


def run_dir(output, phase, dataset, method, folder, seed):
    return os.path.join(output, "base2new", phase, dataset, "shots_2", method, folder, f"seed{seed}")


@pytest.fixture(scope="module")
def grid(tmp_path_factory, data_root, tiny_clip_path):
    """The whole grid, run once by the launcher (2 runs at a time on the CPU)."""
    output = tmp_path_factory.mktemp("sweep") / "output"
    env = environment(data_root, output)
    result = launch(env, METHODS, DATASETS, "1,2", "--gpus", "none", "--jobs", "2", *tiny(tiny_clip_path))
    assert "8 runs in the grid: 0 done, 8 to run" in result.stdout
    assert "Finished: 8 of 8 runs; 0 failed" in result.stdout
    return output, env


def test_grid_writes_every_run_and_parse_results_tabulates_it(grid):
    output, _ = grid
    folders = {"CoOp": "vit_b16_ctxv1", "MyMethod": "MyMethod"}
    for method, folder in folders.items():
        for dataset in ("caltech101", "eurosat"):
            for seed in (1, 2):
                assert os.path.isfile(os.path.join(run_dir(output, "train_base", dataset, method, folder, seed),
                                                   "config.yaml"))
    assert glob.glob(os.path.join(run_dir(output, "train_base", "eurosat", "MyMethod", "MyMethod", 1),
                                  "adapter", "model.pth.tar-1"))

    table = run([sys.executable, "parse_results.py", str(output), "--format", "csv"], grid[1]).stdout
    rows = {(r["method"], r["dataset"]): r for r in csv.DictReader(io.StringIO(table))}
    assert set(rows) == {(m, d) for m in folders for d in ("caltech101", "eurosat", "average")}
    for method, folder in folders.items():
        means = {}
        for dataset in ("caltech101", "eurosat"):
            base = [accuracy(run_dir(output, "train_base", dataset, method, folder, s)) for s in (1, 2)]
            new = [accuracy(run_dir(output, "test_new", dataset, method, folder, s)) for s in (1, 2)]
            means[dataset] = (sum(base) / 2, sum(new) / 2)
            row = rows[(method, dataset)]
            assert (float(row["base"]), float(row["new"])) == pytest.approx(means[dataset], abs=0.006)
            assert row["base_seeds"] == row["new_seeds"] == "2" and row["missing"] == ""
        avg_base = sum(b for b, _ in means.values()) / 2
        avg_new = sum(n for _, n in means.values()) / 2
        expected_h = 2 * avg_base * avg_new / (avg_base + avg_new) if avg_base + avg_new else 0.0
        assert float(rows[(method, "average")]["H"]) == pytest.approx(expected_h, abs=0.006)
    assert "### MyMethod (MyMethod, 2 shots)" in run([sys.executable, "parse_results.py", str(output)], grid[1]).stdout


def test_status_and_rerun_skip_finished_runs_and_redo_a_deleted_one(grid, tiny_clip_path):
    output, env = grid
    assert "8 runs: 8 done" in launch(env, METHODS, DATASETS, "1,2", "--status").stdout

    before = files_under(output)
    sweep = ["bash", "scripts/sweep.sh", METHODS, DATASETS, "1,2", *tiny(tiny_clip_path)]
    result = run(sweep, env)
    assert result.stdout.count("Done already") == 8 and "8 of 8 runs finished" in result.stdout
    assert files_under(output) == before  # nothing ran, nothing was touched

    redo = run_dir(output, "test_new", "eurosat", "CoOp", "vit_b16_ctxv1", 2)
    os.remove(os.path.join(redo, "results.json"))
    assert "1 incomplete" in launch(env, METHODS, DATASETS, "1,2", "--status").stdout
    run(sweep, env)
    after = files_under(output)
    changed = {os.path.dirname(p) for p in set(after) ^ set(before) | {p for p in before if after.get(p) != before[p]}}
    assert changed == {redo}  # a new log.txt-<timestamp> and results.json, nowhere else
    assert len(glob.glob(os.path.join(redo, "log.txt-*"))) == 1


def test_a_second_caller_waits_for_the_run_lock(tmp_path, data_root):
    output = tmp_path / "output"
    env = environment(data_root, output)
    train_dir = run_dir(output, "train_base", "dtd", "CoOp", "vit_b16_ctxv1", 1)
    os.makedirs(os.path.dirname(train_dir))
    with open(os.path.join(os.path.dirname(train_dir), ".seed1.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a running base2new.sh holds it
        waiting = subprocess.Popen(["bash", "scripts/base2new.sh", "CoOp", "dtd", "1"], env=env, cwd=REPO,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        with pytest.raises(subprocess.TimeoutExpired):
            waiting.wait(timeout=3)
        for phase in ("train_base", "test_new"):  # the other caller finishes the run, then unlocks
            os.makedirs(run_dir(output, phase, "dtd", "CoOp", "vit_b16_ctxv1", 1))
            with open(os.path.join(run_dir(output, phase, "dtd", "CoOp", "vit_b16_ctxv1", 1), "results.json"), "w") as f:
                f.write("{}")
    assert waiting.wait(timeout=30) == 0 and "Done already: CoOp dtd seed 1" in waiting.stdout.read()


def test_a_killed_run_resumes_on_the_next_launch(tmp_path, data_root, tiny_clip_path):
    trainer = tmp_path / "crash_once.py"
    trainer.write_text(CRASHING_TRAINER)
    output = tmp_path / "output"
    env = environment(data_root, output, TRAINER_MODULE=f"{EXAMPLE},{trainer}")
    config = "CrashOnceCoOp:configs/trainers/CoOp/vit_b16_ep50.yaml"
    args = [config, "caltech101", "1", "--gpus", "none", *tiny(tiny_clip_path, epochs=2)]

    first = launch(env, *args, check=False)
    assert first.returncode == 1 and "0 of 1 runs; 1 failed" in first.stdout
    train_dir = run_dir(output, "train_base", "caltech101", "CrashOnceCoOp", "vit_b16_ep50", 1)
    assert os.path.isfile(os.path.join(train_dir, "prompt_learner", "resume.pth.tar"))
    assert "1 incomplete" in launch(env, config, "caltech101", "1", "--status").stdout

    launch(env, *args)
    resumed = open(glob.glob(os.path.join(train_dir, "log.txt-*"))[0]).read()
    assert "Previous epoch: 1" in resumed and "epoch [2/2]" in resumed and "epoch [1/2]" not in resumed
    assert os.path.isfile(os.path.join(run_dir(output, "test_new", "caltech101", "CrashOnceCoOp", "vit_b16_ep50", 1),
                                       "results.json"))


def test_slurm_dry_run_writes_an_array_of_the_pending_runs(tmp_path, data_root, tiny_clip_path):
    output = tmp_path / "output"
    env = environment(data_root, output)
    args = ["ZeroshotCLIP", "caltech101,eurosat", "1,2", "--slurm", "--dry-run", "--partition", "gpu",
            "--max-parallel", "2", "--sbatch-arg", "qos=high", *tiny(tiny_clip_path)]
    printed = launch(env, *args).stdout
    script_path = glob.glob(str(output / "slurm" / "*.sbatch"))[0]
    script = open(script_path).read()
    assert script in printed
    for line in ("#SBATCH --array=0-3%2", "#SBATCH --partition=gpu", "#SBATCH --qos=high", "#SBATCH --gres=gpu:1",
                 f"export OUTPUT={output}", "export SHOTS=2"):
        assert line in script.splitlines()
    commands = open(glob.glob(str(output / "slurm" / "*.commands"))[0]).read().splitlines()
    assert len(commands) == 4 and all("scripts/base2new.sh ZeroshotCLIP" in c for c in commands)

    # Task 0 runs line 1 of the commands (in the saved environment): here a run finished meanwhile
    # (e.g. by another launch), so base2new.sh finds it done; a new dry run then leaves it out.
    method, dataset, seed = commands[0].split("base2new.sh ")[1].split()[:3]
    for phase in ("train_base", "test_new"):
        directory = os.path.join(output, "base2new", phase, dataset, "shots_2", method, "vit_b16", f"seed{seed}")
        os.makedirs(directory)
        with open(os.path.join(directory, "results.json"), "w") as f:
            f.write("{}")
    task = subprocess.run(["bash", script_path], env={"PATH": os.environ["PATH"], "SLURM_ARRAY_TASK_ID": "0"},
                          capture_output=True, text=True)
    assert task.returncode == 0 and f"Done already: {method} {dataset} seed {seed}" in task.stdout, task.stderr
    os.rename(script_path, script_path + ".old")
    launch(env, *args)
    scripts = glob.glob(str(output / "slurm" / "*.sbatch"))
    assert len(scripts) == 1 and "#SBATCH --array=0-2%2" in open(scripts[0]).read()
