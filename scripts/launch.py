"""Run a protocol's grid in parallel: one run per GPU on this machine, or Slurm job arrays.

    python scripts/launch.py METHODS DATASETS SEEDS [--protocol P] [options] [KEY VALUE ...]

METHODS, DATASETS and SEEDS are comma lists or `all` (as for scripts/sweep.sh; METHOD:CFG picks
a config). With `--protocol base2new` (the default) every run is `scripts/base2new.sh METHOD DATASET
SEED [CFG] [KEY VALUE ...]` and counts as done when both of its `results.json` exist. With
`--protocol fewshot` each (method, dataset, K, seed) is one `scripts/fewshot.sh` run (`--shots`: a
comma list or `all`, the default); with `--protocol xd`, DATASETS are the targets (`all`, `xd`, `dg`,
`none` or a list, as for scripts/xd.sh) and each method and seed gives a source run on ImageNet plus
one evaluation per target, which starts only once its source has finished. Finished runs are never
started again and interrupted ones resume, which makes a launch safe to repeat after a crash or a
preemption.

    python scripts/launch.py all all all --gpus 0,1,2,3          # this machine, largest datasets first
    python scripts/launch.py CoOp all all --status               # done / running / failed / not started
    python scripts/launch.py all all all --slurm --partition gpu # a job array (submitit if installed)
    python scripts/launch.py all all all --slurm --dry-run       # write and print the sbatch script(s)
    python scripts/launch.py all all all --protocol fewshot --gpus 0,1   # K = 1, 2, 4, 8, 16
    python scripts/launch.py all all all --protocol xd --slurm   # sources, then their evaluations
    python scripts/launch.py --recipe list                       # the published tables (scripts/recipes.py)
    python scripts/launch.py --recipe dpc-table1 --dry-run       # its runs, how many are done, hours left
    python scripts/launch.py --recipe dpc-table1 --gpus 0,1 --add-method MyMethod:my.yaml --trainer-module my.py

Without GPUs the runs go to the CPU, `--jobs` at a time. Per-run console output goes to
`<OUTPUT>/launch_logs/`; each run's own `log.txt` is in its run directory as usual.

The queue holds the plain runs first, the DPC runs (which reuse a backbone's run of the same
protocol as their stage 1) after them and the cross-dataset evaluations last, largest datasets
first within each group, so that a DPC run does not start beside its own backbone run and wait on
that run's lock. An evaluation waits for its source run; if the source fails, the evaluation is
reported failed without starting. With `--slurm` each group is a job array that starts once the
previous one has ended (`--dependency=afterany`); an evaluation whose source failed exits at once
naming it.

Stopping the launcher (Ctrl-C, SIGTERM, SIGHUP) stops its runs: each run is started in its own
process group, which is sent SIGTERM and, after a grace period, SIGKILL, so train.py goes too and
the run's lock is released. A later launch resumes the interrupted runs.
"""
import argparse
import errno
import fcntl
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime

from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts import recipes  # noqa: E402
from scripts.methods import GridError, grid, protocol_grid  # noqa: E402

ARRAY_SUFFIXES = ("", "-dpc", "-eval")  # Slurm job names per queue group (the runs' `stage`)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("methods", nargs="?", help="comma list or `all`; METHOD:CFG picks a config")
    parser.add_argument("datasets", nargs="?", help="comma list of dataset config stems or `all`")
    parser.add_argument("seeds", nargs="?", help="comma list or `all` (1,2,3)")
    parser.add_argument("--recipe", default="",
                        help="run a published table (scripts/recipes.py) instead of METHODS DATASETS SEEDS; "
                             "`list` shows them; with --dry-run: its runs, how many are done, hours left")
    parser.add_argument("--add-method", action="append", default=[], metavar="METHOD[:CFG]",
                        help="with --recipe: add a method (e.g. your own, with --trainer-module) as a row")
    parser.add_argument("--data", default=os.environ.get("DATA", "data"), help="dataset root (env DATA)")
    parser.add_argument("--output", default=os.environ.get("OUTPUT", "output"), help="output root (env OUTPUT)")
    parser.add_argument("--protocol", choices=("base2new", "fewshot", "xd"), default="base2new",
                        help="base2new (default), fewshot (all classes, K shots) or xd (cross-dataset and "
                             "domain generalisation: DATASETS are the targets)")
    parser.add_argument("--shots", default=None,
                        help="shots per class (env SHOTS, default 16); fewshot: comma list or `all` (1,2,4,8,16)")
    parser.add_argument("--tag", default=os.environ.get("TAG", ""),
                        help="keeps a variant's runs apart: config folder suffix (base2new: CFG_TAG), or a "
                             "sub-folder below the config folder (fewshot, xd)")
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
    if args.recipe:  # a recipe names its own grid: the positionals would be config options
        args.opts = [a for a in (args.methods, args.datasets, args.seeds) if a is not None] + args.opts
        if args.tag or args.shots:
            parser.error("--recipe: the recipe sets each row's tag and shots (no --tag / --shots)")
    elif args.seeds is None:
        parser.error("METHODS DATASETS SEEDS are required (or --recipe NAME)")
    elif args.add_method:
        parser.error("--add-method goes with --recipe (otherwise list the method in METHODS)")
    # These land unquoted on `#SBATCH` lines: a line break would add lines to the generated script.
    for flag, values in (("--partition", [args.partition]), ("--account", [args.account]),
                         ("--sbatch-arg", args.sbatch_arg), ("--output", [args.output])):
        for value in values:
            if any(c in value for c in "\n\r\0"):
                parser.error(f"{flag} {value!r}: line breaks are not allowed (the value goes into the sbatch script)")
    return args


def run_env(args):
    """Environment of every run (the protocol scripts read these; fewshot.sh takes its shots per run)."""
    env = {"DATA": args.data, "OUTPUT": args.output, "TAG": args.tag, "TRAINER_MODULE": args.trainer_module,
           "PYTHON": sys.executable}
    if args.protocol != "fewshot" and args.shots is not None:
        env["SHOTS"] = str(args.shots)
    return env


def command(run, opts):
    return run.command(opts)


def visible_gpus():
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        return [g for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return out.split()


def queue_order(runs):
    """The launch order by `stage`: plain runs, then DPC runs (which reuse a backbone's run as stage 1
    and would wait on its lock if started beside it), then evaluations of finished sources; largest
    datasets first in each group."""
    return sorted(runs, key=lambda r: (r.stage, -r.size))


# ----------------------------------------------------------------------------------------------
# Progress
# ----------------------------------------------------------------------------------------------
DONE, RUNNING, FAILED, NOT_STARTED = "done", "running", "failed", "not started"


def lock_path(run):
    """The lock the run's script holds while the run is in progress (a hidden `.<run folder>.lock` beside it)."""
    return run.lock_file


def is_locked(path):
    """Whether some process holds an flock on `path` (probed on a fresh descriptor, released at once)."""
    for flags in (os.O_WRONLY, os.O_RDONLY):  # write access for NFS, where flock becomes a POSIX lock
        try:
            fd = os.open(path, flags)  # no O_CREAT: a missing lock file means never locked
        except FileNotFoundError:
            return False
        except PermissionError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return True
            if err.errno == errno.EBADF:  # e.g. NFS with a read-only descriptor: try the next one
                continue
            raise
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)
    return False


def run_state(run):
    """done: its results.json exist (base-to-new: both phases'); running: its lock is held (by this or
    another launch, or a DPC run reusing it as stage 1); failed: started, not finished and not running
    (crashed or interrupted; the next launch resumes it); not started: no run directory exists."""
    if run.done:
        return DONE
    if is_locked(lock_path(run)):
        return RUNNING
    return FAILED if run.started else NOT_STARTED


def print_status(runs):
    states = [(run, run_state(run)) for run in runs]
    counts = Counter(state for _, state in states)
    print(f"{len(runs)} runs: {counts[DONE]} done, {counts[RUNNING]} running, {counts[FAILED]} failed/interrupted, "
          f"{counts[NOT_STARTED]} not started")
    by_method = {}
    for run, state in states:
        by_method.setdefault(f"{run.method}/{run.folder}", Counter())[state] += 1
    for name, c in by_method.items():
        print(f"  {name}: {c[DONE]}/{sum(c.values())} done" + "".join(
            f", {c[s]} {label}" for s, label in ((RUNNING, "running"), (FAILED, "failed/interrupted")) if c[s]))
    for state, label in ((RUNNING, "running"), (FAILED, "failed/interrupted")):
        for run, s in states:
            if s == state:
                print(f"  {label}: {run.name} ({run.run_dir})")


# ----------------------------------------------------------------------------------------------
# This machine
# ----------------------------------------------------------------------------------------------
def log_path(args, run):
    return os.path.join(args.output, "launch_logs", run.log_name)


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread so that the launcher's cleanup runs."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def install_signal_handlers():
    """SIGTERM (and SIGHUP, unless ignored as under nohup) stop the launcher like Ctrl-C does."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) != signal.SIG_IGN:
            signal.signal(signum, _raise_interrupted)


def _group_alive(pgid):
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, not ours: should not happen for our own children
        return True
    return True


def _signal_group(proc, signum):
    try:
        os.killpg(proc.pid, signum)  # started with start_new_session: the child leads its own group
    except ProcessLookupError:
        pass


def stop_process_groups(procs, grace=5.0):
    """SIGTERM to each child's whole process group (bash, train.py, a DPC runner's stages), then
    SIGKILL to the groups with anything left after `grace` seconds; reaps the children."""
    for proc in procs:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = lambda proc: proc.poll() is None or _group_alive(proc.pid)  # noqa: E731
    while any(map(alive, procs)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for proc in procs:
        if alive(proc):
            _signal_group(proc, signal.SIGKILL)
    for proc in procs:
        proc.wait()


STOP_GRACE_S = 5.0  # SIGTERM -> SIGKILL delay when stopping the runs of an interrupted launch


def unmet_needs(run):
    """The run directories `run` waits for (a cross-dataset evaluation: its source) that are not finished."""
    return [d for d in run.needs if not os.path.isfile(os.path.join(d, "results.json"))]


def take_ready(pending, running):
    """(The first pending run whose sources are finished, or None; the pending runs that can never start
    because a source is unfinished and neither pending nor running: it failed, or is not in the grid).
    Both are removed from `pending`."""
    producing = {r.run_dir for r in pending} | {r.run_dir for r in running}
    blocked = [r for r in pending if any(d not in producing for d in unmet_needs(r))]
    for run in blocked:
        pending.remove(run)
    ready = next((r for r in pending if not unmet_needs(r)), None)
    if ready is not None:
        pending.remove(ready)
    return ready, blocked


class Progress:
    """The local queue's progress: a live bar on a terminal; where the output is redirected to a log, one
    plain line per change instead (the bar's carriage-return frames would fill the log)."""

    def __init__(self, total):
        self.live = sys.stderr.isatty()
        self.total, self.finished = total, 0
        self.bar = tqdm(total=total, unit="run", dynamic_ncols=True, disable=not self.live)

    def line(self, text):
        if self.live:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def started(self, run, where):
        if not self.live:
            print(f"started: {run.name} ({where})", flush=True)

    def done(self, run, failure=""):
        """`run` is over; `failure` says why it failed ("" = it finished)."""
        self.finished += 1
        self.bar.update(1)
        if failure:
            self.line(failure)
        elif not self.live:
            print(f"[{self.finished}/{self.total}] finished: {run.name}", flush=True)

    def counts(self, **counts):
        self.bar.set_postfix(**counts, refresh=False)

    def close(self):
        self.bar.close()


def run_local(args, runs, grace=None):
    """A queue over device slots (GPU ids, or CPU slots), in the given order, each run starting once the
    runs it needs have finished; returns the failed runs (blocked ones included).
    Each run gets its own process group; on an interrupt (KeyboardInterrupt, or SIGTERM/SIGHUP with
    `install_signal_handlers`) the groups of the running ones are stopped before it propagates."""
    gpus = visible_gpus() if args.gpus is None else [g for g in args.gpus.split(",") if g not in ("", "none")]
    slots = gpus or [None] * max(args.jobs, 1)
    where = f"GPUs {','.join(gpus)}" if gpus else f"the CPU ({len(slots)} at a time)"
    pending = list(runs)
    print(f"Launching {len(pending)} runs on {where}; console logs in {os.path.join(args.output, 'launch_logs')}",
          flush=True)
    env = {**os.environ, **run_env(args)}
    grace = STOP_GRACE_S if grace is None else grace
    running, failed = {}, []
    progress = Progress(len(pending))
    try:
        while pending or running:
            for slot in range(len(slots)):
                if slot in running or not pending:
                    continue
                run, blocked = take_ready(pending, [r for r, _, _ in running.values()])
                for never in blocked:
                    failed.append(never)
                    progress.done(never, f"FAILED (not started: its source {', '.join(unmet_needs(never))} did "
                                         f"not finish): {never.name}")
                if run is not None:
                    path = log_path(args, run)
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    log = open(path, "a")
                    log.write(f"=== {datetime.now().isoformat(timespec='seconds')} {shlex.join(command(run, args.opts))}\n")
                    log.flush()
                    slot_env = {**env, "CUDA_VISIBLE_DEVICES": slots[slot] or ""}  # "": the CPU
                    try:
                        proc = subprocess.Popen(command(run, args.opts), env=slot_env, stdout=log,
                                                stderr=subprocess.STDOUT, start_new_session=True)
                    except BaseException:
                        log.close()
                        raise
                    running[slot] = (run, proc, log)
                    progress.started(run, f"GPU {slots[slot]}" if slots[slot] else "CPU")
            for slot, (run, proc, log) in list(running.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del running[slot]
                failure = ""
                if proc.returncode != 0 or not run.done:
                    failed.append(run)
                    failure = f"FAILED (exit {proc.returncode}): {run.name}; see {log_path(args, run)}"
                progress.done(run, failure)
            progress.counts(done=progress.finished - len(failed), running=len(running), failed=len(failed),
                            remaining=len(pending))
            time.sleep(0.5)
    finally:
        handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        if threading.current_thread() is not threading.main_thread():
            handled = ()  # signals only reach (and handlers can only be set in) the main thread
        previous = {s: signal.getsignal(s) for s in handled}
        for s in handled:  # a second Ctrl-C must not cut the cleanup short (it takes <= grace)
            signal.signal(s, signal.SIG_IGN)
        try:
            progress.close()
            if running:  # interrupted launcher: stop its own runs, whole process groups
                print(f"Stopping {len(running)} running run(s)...", file=sys.stderr, flush=True)
                stop_process_groups([proc for _, proc, _ in running.values()], grace)
                for run, proc, log in running.values():
                    log.close()
                    print(f"  stopped: {run.name}", file=sys.stderr, flush=True)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)
    return failed


# ----------------------------------------------------------------------------------------------
# Slurm
# ----------------------------------------------------------------------------------------------
def slurm_arrays(runs, protocol="base2new"):
    """The job arrays to submit, in order: [(name, runs)], one per queue `stage`, each waiting for the
    previous one (`--dependency=afterany`): DPC runs then find their backbone's stage 1 finished instead
    of holding a GPU while they wait on its lock, and evaluations find their sources finished."""
    stages = sorted({r.stage for r in runs})
    return [(protocol + ARRAY_SUFFIXES[stage], [r for r in runs if r.stage == stage]) for stage in stages]


def sbatch_script(args, runs, commands_file, name="base2new"):
    """A plain `sbatch --array` script running line i+1 of `commands_file` as task i."""
    throttle = f"%{args.max_parallel}" if args.max_parallel else ""
    lines = ["#!/usr/bin/env bash", f"#SBATCH --job-name={name}", f"#SBATCH --array=0-{len(runs) - 1}{throttle}",
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


def after(extra, job_id):
    """`extra` sbatch options plus a dependency on the whole job array `job_id` (kept: the user's own)."""
    dependency = f"afterany:{job_id}"
    return {**extra, "dependency": f"{extra['dependency']},{dependency}" if extra.get("dependency") else dependency}


def submit_slurm(args, runs):
    """One job array per `slurm_arrays` group, the DPC one depending on the plain one."""
    folder = os.path.join(args.output, "slurm")
    os.makedirs(folder, exist_ok=True)
    arrays = slurm_arrays(runs, args.protocol)
    extra = dict(kv.split("=", 1) for kv in args.sbatch_arg)
    try:
        if args.dry_run:
            raise ImportError
        import submitit
    except ImportError:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        scripts = []
        for name, group in arrays:
            commands_file = os.path.abspath(os.path.join(folder, f"{name}-{stamp}.commands"))
            with open(commands_file, "w") as f:
                f.writelines(shlex.join(command(run, args.opts)) + "\n" for run in group)
            script = os.path.join(folder, f"{name}-{stamp}.sbatch")
            with open(script, "w") as f:
                f.write(sbatch_script(args, group, commands_file, name))
            scripts.append((script, commands_file, group))
        if args.dry_run:
            for script, commands_file, group in scripts:
                print(f"# {script} ({len(group)} tasks; commands in {commands_file})")
                print(open(script).read())
            if len(scripts) > 1:  # each array starts once the previous one has ended
                print("# Submit with:")
                print(f"#   JOB=$(sbatch --parsable {shlex.quote(scripts[0][0])} | cut -d\\; -f1)")
                for script, _, _ in scripts[1:-1]:
                    print(f"#   JOB=$(sbatch --parsable --dependency=afterany:$JOB {shlex.quote(script)} | cut -d\\; -f1)")
                print(f"#   sbatch --dependency=afterany:$JOB {shlex.quote(scripts[-1][0])}")
            return
        print("submitit is not installed; submitting the plain sbatch script" + "s" * (len(scripts) > 1))
        job_id = None
        for script, _, group in scripts:
            dependency = [f"--dependency=afterany:{job_id}"] if job_id else []
            out = subprocess.run(["sbatch", "--parsable", *dependency, script], check=True, capture_output=True,
                                 text=True).stdout
            previous, job_id = job_id, out.strip().splitlines()[-1].split(";")[0]
            print(f"Submitted {len(group)} runs as job array {job_id} ({script})"
                  + (f", starting after array {previous} has ended" if previous else ""))
        return
    executor = submitit.AutoExecutor(folder=os.path.join(folder, "%j"))
    if executor.cluster != "slurm":  # submitit falls back to local processes without Slurm
        sys.exit("launch.py --slurm: no Slurm on this machine (no srun); use --gpus instead")
    job_id = None
    for name, group in arrays:
        executor.update_parameters(
            name=name, timeout_min=args.timeout_min, gpus_per_node=1, tasks_per_node=1,
            cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb, slurm_partition=args.partition or None,
            slurm_account=args.account or None, slurm_array_parallelism=args.max_parallel or len(group),
            slurm_additional_parameters=after(extra, job_id) if job_id else dict(extra))
        with executor.batch():
            jobs = [executor.submit(SlurmTask(command(run, args.opts), run_env(args), os.getcwd())) for run in group]
        previous, job_id = job_id, jobs[0].job_id.split("_")[0]
        print(f"Submitted {len(jobs)} runs as a job array ({job_id})"
              + (f", starting after array {previous} has ended" if previous else "") + f"; logs in {folder}.")
    print("Re-run this command after a preemption: finished runs are skipped.")


def build_grid(args):
    """The runs of the chosen protocol (`args.shots` normalised: an int, or fewshot's comma list)."""
    if args.protocol == "fewshot":
        args.shots = args.shots or "all"
        return protocol_grid("fewshot", args.methods, args.datasets, args.seeds, args.shots, args.output, args.tag)
    try:
        shots = args.shots or os.environ.get("SHOTS")
        # base-to-new without a shot count: each method's own (16; PromptKD's unlabelled 0)
        args.shots = int(shots) if shots else (16 if args.protocol == "xd" else None)
    except ValueError:
        raise GridError(f"--shots must be one number with --protocol {args.protocol} (got {args.shots!r})")
    if args.protocol == "xd":
        return protocol_grid("xd", args.methods, args.datasets, args.seeds, args.shots, args.output, args.tag,
                             args.opts)
    return grid(args.methods, args.datasets, args.seeds, args.output, args.shots, args.tag)


def build_recipe(args):
    """(every run of the recipe, the runs to launch); `args.protocol` becomes the recipe's."""
    recipe = recipes.get(args.recipe, args.add_method)
    args.protocol = recipes.launch_protocol(recipe)
    runs, launched = recipes.recipe_jobs(recipe, args.output)
    return recipe, runs, launched


def main(argv=None):
    args = parse_args(argv)
    if args.recipe == "list":
        recipes.print_list()
        return 0
    recipe = None
    try:
        if args.recipe:
            recipe, all_runs, runs = build_recipe(args)
        else:
            runs = build_grid(args)
    except GridError as err:
        sys.exit(f"launch.py: {err}")
    if args.status:
        print_status(all_runs if recipe else runs)
        return 0
    if recipe and args.dry_run and not args.slurm:
        recipes.print_plan(recipe, all_runs, args.opts)
        return 0
    # Plain runs before DPC ones before evaluations, largest datasets first, so the longest runs do not
    # start last.
    pending = queue_order([run for run in runs if not run.done])
    print(f"{len(runs)} runs in the grid: {len(runs) - len(pending)} done, {len(pending)} to run")
    if not pending:
        return 0
    if args.slurm:
        submit_slurm(args, pending)
        return 0
    if args.dry_run:
        print("\n".join(shlex.join(command(run, args.opts)) for run in pending))
        return 0
    install_signal_handlers()
    try:
        failed = run_local(args, pending)
    except KeyboardInterrupt as interrupt:  # the runs were stopped; a new launch resumes them
        why = interrupt.args[0] if isinstance(interrupt, Interrupted) else "interrupted"
        print(f"Stopped ({why}): the unfinished runs resume on the next launch", file=sys.stderr)
        return 128 + int(getattr(interrupt, "signum", signal.SIGINT))
    print(f"Finished: {len(pending) - len(failed)} of {len(pending)} runs; {len(failed)} failed")
    for run in failed:
        print(f"  failed: {run.name} (console log {log_path(args, run)})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
