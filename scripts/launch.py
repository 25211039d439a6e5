"""Run a base-to-new grid in parallel: one run per GPU on this machine, or a Slurm job array.

    python scripts/launch.py METHODS DATASETS SEEDS [options] [KEY VALUE ...]

METHODS, DATASETS and SEEDS are comma lists or `all` (as for scripts/sweep.sh; METHOD:CFG picks
a config). Every run is `scripts/base2new.sh METHOD DATASET SEED [CFG] [KEY VALUE ...]`, so a run
counts as done when both of its `results.json` exist: finished runs are never started again and
interrupted ones resume, which makes a launch safe to repeat after a crash or a preemption.

    python scripts/launch.py all all all --gpus 0,1,2,3          # this machine, largest datasets first
    python scripts/launch.py CoOp all all --status               # done / incomplete / remaining
    python scripts/launch.py all all all --slurm --partition gpu # a job array (submitit if installed)
    python scripts/launch.py all all all --slurm --dry-run       # write and print the sbatch script

Without GPUs the runs go to the CPU, `--jobs` at a time. Per-run console output goes to
`<OUTPUT>/launch_logs/`; each run's own `log.txt` is in its run directory as usual.
"""
import argparse
import os
import shlex
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime

from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts.methods import REPO, GridError, dataset_size, grid  # noqa: E402

BASE2NEW = os.path.join(REPO, "scripts", "base2new.sh")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("methods", help="comma list or `all`; METHOD:CFG picks a config")
    parser.add_argument("datasets", help="comma list of dataset config stems or `all`")
    parser.add_argument("seeds", help="comma list or `all` (1,2,3)")
    parser.add_argument("--data", default=os.environ.get("DATA", "data"), help="dataset root (env DATA)")
    parser.add_argument("--output", default=os.environ.get("OUTPUT", "output"), help="output root (env OUTPUT)")
    parser.add_argument("--shots", type=int, default=int(os.environ.get("SHOTS", 16)), help="shots per class")
    parser.add_argument("--tag", default=os.environ.get("TAG", ""), help="config folder suffix (CFG_TAG)")
    parser.add_argument("--trainer-module", default=os.environ.get("TRAINER_MODULE", ""),
                        help="out-of-tree trainer file(s) or module(s), comma-separated")
    parser.add_argument("--gpus", default=None,
                        help="GPU ids, one run per GPU (default: all visible GPUs; `none`: CPU)")
    parser.add_argument("--jobs", type=int, default=1, help="concurrent runs on the CPU (no GPUs)")
    parser.add_argument("--status", action="store_true", help="print the grid's progress and exit")
    slurm = parser.add_argument_group("Slurm")
    slurm.add_argument("--slurm", action="store_true", help="submit the pending runs as a job array")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the pending commands (with --slurm: write and print the sbatch script)")
    slurm.add_argument("--partition", default="", help="Slurm partition")
    slurm.add_argument("--account", default="", help="Slurm account")
    slurm.add_argument("--timeout-min", type=int, default=24 * 60, help="time limit per run, minutes")
    slurm.add_argument("--cpus-per-task", type=int, default=8, help="CPU cores per run (data loading)")
    slurm.add_argument("--mem-gb", type=int, default=32, help="host memory per run")
    slurm.add_argument("--max-parallel", type=int, default=0, help="array throttle (0: no limit)")
    slurm.add_argument("--sbatch-arg", action="append", default=[], metavar="KEY=VALUE",
                       help="extra sbatch option, e.g. qos=high (repeatable)")
    return parser


def parse_args(argv=None):
    """Options may come before or after the trailing `KEY VALUE` config options."""
    parser = build_parser()
    args, args.opts = parser.parse_known_args(argv)
    unknown = [a for a in args.opts if a.startswith("--")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def run_env(args):
    """Environment of every run (base2new.sh reads these)."""
    return {"DATA": args.data, "OUTPUT": args.output, "SHOTS": str(args.shots), "TAG": args.tag,
            "TRAINER_MODULE": args.trainer_module, "PYTHON": sys.executable}


def command(run, opts):
    return ["bash", BASE2NEW, run.method, run.dataset, str(run.seed), *([run.cfg_arg] if run.cfg_arg else []), *opts]


def visible_gpus():
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        return [g for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return out.split()


# ----------------------------------------------------------------------------------------------
# Progress
# ----------------------------------------------------------------------------------------------
def status_counts(runs):
    """done: both phases have results.json; incomplete: started (crashed, or running elsewhere)."""
    return Counter("done" if r.done else "incomplete" if r.started else "remaining" for r in runs)


def print_status(runs):
    counts = status_counts(runs)
    print(f"{len(runs)} runs: {counts['done']} done, {counts['incomplete']} incomplete "
          f"(interrupted or running elsewhere), {counts['remaining']} not started")
    by_method = {}
    for run in runs:
        by_method.setdefault(f"{run.method}/{run.folder}", Counter())["done" if run.done else "todo"] += 1
    for name, c in by_method.items():
        print(f"  {name}: {c['done']}/{c['done'] + c['todo']} done")
    for run in runs:
        if run.started and not run.done:
            print(f"  incomplete: {run.name} ({run.train_dir})")


# ----------------------------------------------------------------------------------------------
# This machine
# ----------------------------------------------------------------------------------------------
def log_path(args, run):
    name = f"{run.method}-{run.folder}-{run.dataset}-seed{run.seed}.log"
    return os.path.join(args.output, "launch_logs", name.replace(os.sep, "_"))


def run_local(args, runs):
    """A queue over device slots (GPU ids, or CPU slots), in the given order; returns the failed runs."""
    gpus = visible_gpus() if args.gpus is None else [g for g in args.gpus.split(",") if g not in ("", "none")]
    slots = gpus or [None] * max(args.jobs, 1)
    where = f"GPUs {','.join(gpus)}" if gpus else f"the CPU ({len(slots)} at a time)"
    pending = list(runs)
    print(f"Launching {len(pending)} runs on {where}; console logs in {os.path.join(args.output, 'launch_logs')}")
    env = {**os.environ, **run_env(args)}
    running, failed, finished = {}, [], 0
    bar = tqdm(total=len(pending), unit="run", dynamic_ncols=True)
    try:
        while pending or running:
            for slot in range(len(slots)):
                if slot not in running and pending:
                    run = pending.pop(0)
                    path = log_path(args, run)
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    log = open(path, "a")
                    log.write(f"=== {datetime.now().isoformat(timespec='seconds')} {shlex.join(command(run, args.opts))}\n")
                    log.flush()
                    slot_env = {**env, "CUDA_VISIBLE_DEVICES": slots[slot] or ""}  # "": the CPU
                    proc = subprocess.Popen(command(run, args.opts), env=slot_env, stdout=log, stderr=subprocess.STDOUT)
                    running[slot] = (run, proc, log)
            for slot, (run, proc, log) in list(running.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del running[slot]
                finished += 1
                if proc.returncode != 0 or not run.done:
                    failed.append(run)
                    bar.write(f"FAILED (exit {proc.returncode}): {run.name}; see {log_path(args, run)}")
                bar.update(1)
            bar.set_postfix(done=finished - len(failed), running=len(running), failed=len(failed),
                            remaining=len(pending), refresh=False)
            time.sleep(0.5)
    finally:
        bar.close()
        for run, proc, log in running.values():  # interrupted launcher: stop its own children
            proc.terminate()
            proc.wait()
            log.close()
    return failed


# ----------------------------------------------------------------------------------------------
# Slurm
# ----------------------------------------------------------------------------------------------
def sbatch_script(args, runs, commands_file):
    """A plain `sbatch --array` script running line i+1 of `commands_file` as task i."""
    throttle = f"%{args.max_parallel}" if args.max_parallel else ""
    lines = ["#!/usr/bin/env bash", "#SBATCH --job-name=base2new", f"#SBATCH --array=0-{len(runs) - 1}{throttle}",
             "#SBATCH --gres=gpu:1", "#SBATCH --ntasks=1", f"#SBATCH --cpus-per-task={args.cpus_per_task}",
             f"#SBATCH --mem={args.mem_gb}G", f"#SBATCH --time={args.timeout_min}",
             f"#SBATCH --output={os.path.abspath(os.path.join(args.output, 'slurm'))}/%A_%a.out",
             "#SBATCH --requeue  # a preempted run resumes from its last finished epoch"]
    lines += [f"#SBATCH --partition={args.partition}"] * bool(args.partition)
    lines += [f"#SBATCH --account={args.account}"] * bool(args.account)
    lines += [f"#SBATCH --{kv}" for kv in args.sbatch_arg]
    lines += ["", f"cd {shlex.quote(os.getcwd())}"]
    lines += [f"export {key}={shlex.quote(value)}" for key, value in run_env(args).items()]
    lines += [f'eval "$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(commands_file)})"', ""]
    return "\n".join(lines)


class SlurmTask:
    """One run as a submitit task (picklable; runs base2new.sh on the node)."""

    def __init__(self, command, env, cwd):
        self.command, self.env, self.cwd = command, env, cwd

    def __call__(self):
        subprocess.run(self.command, env={**os.environ, **self.env}, cwd=self.cwd, check=True)


def submit_slurm(args, runs):
    folder = os.path.join(args.output, "slurm")
    os.makedirs(folder, exist_ok=True)
    try:
        if args.dry_run:
            raise ImportError
        import submitit
    except ImportError:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        commands_file = os.path.abspath(os.path.join(folder, f"base2new-{stamp}.commands"))
        with open(commands_file, "w") as f:
            f.writelines(shlex.join(command(run, args.opts)) + "\n" for run in runs)
        script = os.path.join(folder, f"base2new-{stamp}.sbatch")
        with open(script, "w") as f:
            f.write(sbatch_script(args, runs, commands_file))
        if args.dry_run:
            print(f"# {script} ({len(runs)} tasks; commands in {commands_file})")
            print(open(script).read())
            return
        print("submitit is not installed; submitting the plain sbatch script")
        subprocess.run(["sbatch", script], check=True)
        return
    executor = submitit.AutoExecutor(folder=os.path.join(folder, "%j"))
    if executor.cluster != "slurm":  # submitit falls back to local processes without Slurm
        sys.exit("launch.py --slurm: no Slurm on this machine (no srun); use --gpus instead")
    extra = dict(kv.split("=", 1) for kv in args.sbatch_arg)
    executor.update_parameters(
        name="base2new", timeout_min=args.timeout_min, gpus_per_node=1, tasks_per_node=1,
        cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb, slurm_partition=args.partition or None,
        slurm_account=args.account or None, slurm_array_parallelism=args.max_parallel or len(runs),
        slurm_additional_parameters=extra)
    with executor.batch():
        jobs = [executor.submit(SlurmTask(command(run, args.opts), run_env(args), os.getcwd())) for run in runs]
    print(f"Submitted {len(jobs)} runs as a job array ({jobs[0].job_id.split('_')[0]}); "
          f"logs in {folder}. Re-run this command after a preemption: finished runs are skipped.")


def main(argv=None):
    args = parse_args(argv)
    try:
        runs = grid(args.methods, args.datasets, args.seeds, args.output, args.shots, args.tag)
    except GridError as err:
        sys.exit(f"launch.py: {err}")
    if args.status:
        print_status(runs)
        return 0
    # Largest datasets first, so the longest runs do not start last.
    pending = sorted((run for run in runs if not run.done), key=lambda r: -dataset_size(r.dataset, args.shots))
    print(f"{len(runs)} runs in the grid: {len(runs) - len(pending)} done, {len(pending)} to run")
    if not pending:
        return 0
    if args.slurm:
        submit_slurm(args, pending)
        return 0
    if args.dry_run:
        print("\n".join(shlex.join(command(run, args.opts)) for run in pending))
        return 0
    failed = run_local(args, pending)
    print(f"Finished: {len(pending) - len(failed)} of {len(pending)} runs; {len(failed)} failed")
    for run in failed:
        print(f"  failed: {run.name} (console log {log_path(args, run)})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
