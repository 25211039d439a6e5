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
import signal
import subprocess
import sys
import textwrap
import time
import types

import pytest

from scripts import launch as launcher
from scripts.methods import dataset_size
from scripts.methods import grid as run_grid
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
    def _run_epoch(self):
        marker = os.path.join(self.output_dir, "crashed-once")
        if self.epoch == 1 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(137)  # no exception handling, no cleanup: as after SIGKILL
        super()._run_epoch()
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
    # output to a pipe: a plain line per started and finished run, no progress-bar frames
    assert result.stdout.count("started: ") == 8 and "[8/8] finished: " in result.stdout
    assert "\r" not in result.stdout + result.stderr
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
    assert "7 done, 0 running, 1 failed/interrupted, 0 not started" in launch(
        env, METHODS, DATASETS, "1,2", "--status").stdout
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
    assert "0 done, 0 running, 1 failed/interrupted" in launch(env, config, "caltech101", "1", "--status").stdout

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


# ----------------------------------------------------------------------------------------------
# launch.py's queue order, --status states, Slurm arrays and interrupt handling (fast, in-process
# where possible)
# ----------------------------------------------------------------------------------------------
def test_queue_puts_dpc_runs_after_all_plain_runs_longest_first(tmp_path):
    runs = run_grid("DPC_CoOp,CoOp,DPC_MaPLe,MaPLe,ZeroshotCLIP", "eurosat,imagenet,dtd,caltech101", "1,2",
                    str(tmp_path))
    queue = launcher.queue_order(runs)
    assert sorted(map(id, queue)) == sorted(map(id, runs))
    staged = [bool(r.runner) for r in queue]
    assert staged == sorted(staged) and staged.count(True) == 16  # every DPC run after every plain one
    for group in (queue[:24], queue[24:]):
        sizes = [dataset_size(r.dataset, 16) for r in group]
        assert sizes == sorted(sizes, reverse=True)  # longest first within each group
    assert queue[0].dataset == "imagenet" and queue[24].dataset == "imagenet" and queue[24].runner


def write_results(run):
    for directory in (run.train_dir, run.test_dir):
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "results.json"), "w") as f:
            f.write("{}")


def test_status_tells_running_runs_from_failed_ones_by_their_lock(tmp_path, capsys):
    runs = run_grid("CoOp,DPC_CoOp", "caltech101,eurosat,dtd", "1", str(tmp_path / "output"))
    done, running, failed, waiting, stale, fresh = runs  # CoOp x 3 datasets, then DPC_CoOp x 3
    for run in runs:
        os.makedirs(os.path.dirname(run.train_dir), exist_ok=True)
    write_results(done)
    os.makedirs(running.train_dir)  # started, and its lock held (by another process, as base2new.sh does)
    # waiting: a DPC run in its stage 1, locked with no directory of its own yet
    os.makedirs(failed.train_dir)  # started, lock file left behind but not held: crashed or interrupted
    for run in (failed, stale):  # stale: a lock file, but never started
        open(launcher.lock_path(run), "w").close()
    holder = subprocess.Popen(["flock", launcher.lock_path(running), "flock", launcher.lock_path(waiting),
                               "sleep", "60"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not all(launcher.is_locked(launcher.lock_path(r)) for r in (running, waiting)):
            assert time.monotonic() < deadline and holder.poll() is None
            time.sleep(0.05)
        states = {run.name: launcher.run_state(run) for run in runs}
        assert states == {done.name: "done", running.name: "running", waiting.name: "running",
                          failed.name: "failed", stale.name: "not started", fresh.name: "not started"}
        launcher.print_status(runs)
        out = capsys.readouterr().out
        assert "6 runs: 1 done, 2 running, 1 failed/interrupted, 2 not started" in out
        assert f"  running: {running.name}" in out and f"  failed/interrupted: {failed.name}" in out
        assert "  CoOp/vit_b16_ctxv1: 1/3 done, 1 running, 1 failed/interrupted" in out
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # the flock inside and sleep too
        holder.wait()
    deadline = time.monotonic() + 10
    while launcher.is_locked(launcher.lock_path(running)) and time.monotonic() < deadline:
        time.sleep(0.05)  # the holder's processes are on their way out
    assert launcher.run_state(running) == "failed"  # the holder died: the lock is free again
    for run in (failed, stale):  # the probe released the lock it took and created no file
        with open(launcher.lock_path(run)) as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert not os.path.exists(launcher.lock_path(fresh))


SLURM_ARGS = ["CoOp,DPC_CoOp", "caltech101,eurosat", "1", "--slurm", "--sbatch-arg", "qos=high"]


def test_slurm_dry_run_writes_the_dpc_runs_as_a_second_array(tmp_path, capsys):
    output = tmp_path / "output"
    assert launcher.main([*SLURM_ARGS, "--dry-run", "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    scripts = {os.path.basename(p).split("-2")[0]: p for p in glob.glob(str(output / "slurm" / "*.sbatch"))}
    assert set(scripts) == {"base2new", "base2new-dpc"}
    for name, path in scripts.items():
        script = open(path).read()
        assert script in printed and f"#SBATCH --job-name={name}" in script and "#SBATCH --array=0-1" in script
        commands = open(path.replace(".sbatch", ".commands")).read().splitlines()
        assert len(commands) == 2 and all((" DPC_CoOp " in c) == (name == "base2new-dpc") for c in commands)
    assert f"sbatch --dependency=afterany:$JOB {scripts['base2new-dpc']}" in printed

    # Only DPC runs pending: one array, no dependency.
    for run in run_grid("CoOp", "caltech101,eurosat", "1", str(output)):
        write_results(run)
    for path in glob.glob(str(output / "slurm" / "*")):
        os.remove(path)
    assert launcher.main([*SLURM_ARGS, "--dry-run", "--output", str(output)]) == 0
    assert "--dependency" not in capsys.readouterr().out
    assert [os.path.basename(p).split("-2")[0] for p in glob.glob(str(output / "slurm" / "*.sbatch"))] == [
        "base2new-dpc"]


def test_slurm_submits_the_dpc_array_after_the_plain_one(tmp_path, monkeypatch, capsys):
    calls = tmp_path / "sbatch.calls"
    fake = tmp_path / "bin" / "sbatch"
    fake.parent.mkdir()
    fake.write_text(f'#!/usr/bin/env bash\necho "$*" >> {calls}\necho "$((4000 + $(wc -l < {calls})));cluster"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setitem(sys.modules, "submitit", None)  # no submitit: the plain sbatch scripts
    assert launcher.main([*SLURM_ARGS, "--output", str(tmp_path / "output")]) == 0
    first, second = calls.read_text().splitlines()
    assert first.startswith("--parsable ") and first.endswith(".sbatch") and "base2new-dpc" not in first
    assert second.startswith("--parsable --dependency=afterany:4001 ") and "base2new-dpc" in second
    assert "job array 4002 (" in capsys.readouterr().out


def test_submitit_submits_the_dpc_batch_with_a_dependency(tmp_path, monkeypatch):
    batches = []

    class Job:
        def __init__(self, job_id):
            self.job_id = job_id

    class AutoExecutor:
        cluster = "slurm"

        def __init__(self, folder):
            self.params = {}

        def update_parameters(self, **params):
            self.params.update(params)

        def batch(self):
            import contextlib
            batches.append((dict(self.params), []))
            return contextlib.nullcontext()

        def submit(self, task):
            tasks = batches[-1][1]
            tasks.append(task)
            return Job(f"{700 + len(batches)}_{len(tasks) - 1}")

    monkeypatch.setitem(sys.modules, "submitit", types.SimpleNamespace(AutoExecutor=AutoExecutor))
    assert launcher.main([*SLURM_ARGS, "--output", str(tmp_path / "output")]) == 0
    (plain, plain_tasks), (staged, staged_tasks) = batches
    assert plain["name"] == "base2new" and plain["slurm_additional_parameters"] == {"qos": "high"}
    assert staged["name"] == "base2new-dpc"
    assert staged["slurm_additional_parameters"] == {"qos": "high", "dependency": "afterany:701"}
    assert [t.command[2] for t in plain_tasks] == ["CoOp"] * 2
    assert [t.command[2] for t in staged_tasks] == ["DPC_CoOp"] * 2


# The launcher (in a subprocess) on a fake run: bash holding the run's lock, with two grandchildren
# that inherit it, one of which ignores SIGTERM (so the launcher has to escalate to SIGKILL).
LAUNCHER_ON_A_FAKE_RUN = """
import signal, sys
sys.path.insert(0, {repo!r})
from scripts import launch
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
FAKE = ('exec 9>{lock}; flock 9; sleep 300 & echo $! >> {pids}; '
        '(trap "" TERM; exec sleep 301) & echo $! >> {pids}; wait')
launch.command = lambda run, opts: ["bash", "-c", FAKE]
launch.STOP_GRACE_S = 1.0
sys.exit(launch.main(["CoOp", "caltech101", "1", "--gpus", "none", "--output", {output!r}]))
"""


def process_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # an unreaped zombie is gone too
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stopping_the_launcher_stops_the_runs_whole_process_group(tmp_path, signum):
    pids, lock = tmp_path / "pids", tmp_path / "run.lock"
    driver = subprocess.Popen([sys.executable, "-c", textwrap.dedent(LAUNCHER_ON_A_FAKE_RUN).format(
        repo=REPO, lock=str(lock), pids=str(pids), output=str(tmp_path / "output"))],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    grandchildren = []
    try:
        deadline = time.monotonic() + 20
        while len(grandchildren) < 2:
            assert time.monotonic() < deadline and driver.poll() is None, driver.stdout.read() if driver.poll() else ""
            time.sleep(0.05)
            grandchildren = pids.read_text().split() if pids.exists() else []
        assert launcher.is_locked(str(lock))
        driver.send_signal(signum)
        assert driver.wait(timeout=15) == 128 + signum
        out = driver.stdout.read()
        assert "Stopping 1 running run(s)" in out and "stopped: CoOp/vit_b16_ctxv1 caltech101 seed1" in out, out
        assert not [pid for pid in grandchildren if process_alive(int(pid))]
        assert not launcher.is_locked(str(lock))  # the run's lock is free for the next launch
    finally:
        if driver.poll() is None:
            driver.kill()
        for pid in grandchildren:
            if process_alive(int(pid)):
                os.kill(int(pid), signal.SIGKILL)
