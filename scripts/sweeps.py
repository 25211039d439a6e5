"""What the sweep scripts run: the bash scripts in scripts/ are thin wrappers over these commands.

    python scripts/sweeps.py base2new METHOD DATASET SEED [CFG] [KEY VALUE ...]   (scripts/base2new.sh)
    python scripts/sweeps.py dpc BACKBONE DATASET SEED [KEY VALUE ...]            (scripts/dpc/base2new.sh)
    python scripts/sweeps.py sweep METHODS DATASETS SEEDS [KEY VALUE ...]         (scripts/sweep.sh)
    python scripts/sweeps.py fewshot METHODS DATASETS SEEDS [SHOTS] [KEY VALUE ...]  (scripts/fewshot.sh)
    python scripts/sweeps.py xd METHODS SEEDS [TARGETS] [KEY VALUE ...]           (scripts/xd.sh)

Each command reads its arguments and environment as its script documents (the script's header is the
usage text), resolves the runs through scripts/methods.py, skips finished ones and starts train.py for
the others. Bad arguments stop before any run (exit 2; base2new's unknown method or config: 1); a
failing train.py fails its run.
A run is locked while it runs (`flock` on a hidden `.<run folder>.lock` beside it; scripts/launch.py
reads the same lock), so a second caller waits, then finds it done.
"""
import itertools
import os
import re
import subprocess
import sys
from dataclasses import dataclass, replace

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from scripts.methods import (DPC_STAGE1, METHODS, XD_SOURCE, DPCStage1, GridError, dataset_config_file,  # noqa: E402
                             parse_method, protocol_grid, resolve, resolve_fewshot, resolve_xd, run_lock,
                             split_list)

CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*\.")  # an optional positional argument vs. the first KEY (OPTIM.LR)
SCRIPT_KEYS = ("DATASET.NUM_SHOTS", "DATASET.SUBSAMPLE_CLASSES")  # set by the scripts themselves
SCRIPTS = {"base2new": "scripts/base2new.sh", "dpc": "scripts/dpc/base2new.sh", "sweep": "scripts/sweep.sh",
           "fewshot": "scripts/fewshot.sh", "xd": "scripts/xd.sh"}


class Stop(Exception):
    """A script's error: `message` to stderr, exit status `code`."""

    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Env:
    """The scripts' environment variables, with their defaults."""
    data: str = "data"
    output: str = "output"
    shots: str = ""           # "" = the script's default
    tag: str = ""
    python: str = "python"
    trainer_module: str = ""
    phase: str = "both"
    loadep: str = ""
    cfg: str = ""             # DPC: the stage-2 config
    backbone_cfg: str = ""    # DPC: the stage-1 config

    @classmethod
    def read(cls):
        get = os.environ.get
        return cls(get("DATA") or "data", get("OUTPUT") or "output", get("SHOTS", ""), get("TAG", ""),
                   get("PYTHON") or "python", get("TRAINER_MODULE", ""), get("PHASE") or "both", get("LOADEP", ""),
                   get("CFG", ""), get("BACKBONE_CFG", ""))

    def exported(self, **extra):
        """The environment of child processes: the scripts export these variables."""
        return {**os.environ, "DATA": self.data, "OUTPUT": self.output, "TAG": self.tag, "PYTHON": self.python,
                "TRAINER_MODULE": self.trainer_module, **({"SHOTS": self.shots} if self.shots else {}), **extra}

    def module_args(self):
        return [a for module in self.trainer_module.split(",") if module for a in ("--trainer-module", module)]


def usage(command):
    """The header comment of the command's script (its usage text)."""
    lines = []
    with open(os.path.join(REPO, SCRIPTS[command])) as f:
        for number, line in enumerate(f):
            if number == 0:
                continue
            if not line.startswith("#"):
                break
            lines.append(re.sub(r"^# ?", "", line.rstrip("\n")))
    return "\n".join(lines)


def split_args(command, argv, required, optional=True):
    """(the required arguments, the optional one or "", KEY VALUE options); refuses the keys the script sets."""
    if len(argv) < required:
        print(usage(command))
        raise SystemExit(2)
    positional, rest = argv[:required], argv[required:]
    optional = rest.pop(0) if optional and rest and not CONFIG_KEY.match(rest[0]) else ""
    hint = {"base2new": "use SHOTS=K for the shot count", "fewshot": "give the shot counts as SHOTS",
            "xd": "use SHOTS=K for the source's shots"}.get(command)
    for key in rest[0::2]:
        if hint and key in SCRIPT_KEYS:
            raise Stop(f"{command}.sh: {key} is set by the script ({hint})", 2)
    return positional, optional, rest


def run_status(returncode):
    """A child's exit status as the shell reports it (128 + N for a child killed by signal N)."""
    return 128 - returncode if returncode < 0 else returncode


def train(env, *args, python_file="train.py"):
    """Run train.py (or another script of the repository); raise Stop with its status if it fails."""
    status = run_status(subprocess.call([env.python, os.path.join(REPO, python_file), *args], env=env.exported()))
    if status:
        raise Stop("", status)


def resolved(script, code, resolver, *args):
    """`resolver(*args)`; its GridError stops the script with `code`, as `<script>: <error>`."""
    try:
        return resolver(*args)
    except GridError as err:
        raise Stop(f"{script}: {err}", code) from None


def finished(run_dir):
    return os.path.isfile(os.path.join(run_dir, "results.json"))


def say(text):
    print(text, flush=True)  # before the next child's output


# ----------------------------------------------------------------------------------------------
# Base-to-new: one run (train on the base classes, evaluate on the new ones), DPC's stages, a sweep
# ----------------------------------------------------------------------------------------------
def base2new(env, method, dataset, seed, cfg="", extra=()):
    """One base-to-new run of `method` (both phases, or PHASE's), skipping finished phases."""
    dataset_config = dataset_config_file(dataset)
    if not os.path.isfile(dataset_config):
        raise Stop(f"base2new.sh: unknown dataset '{dataset}' (no {dataset_config})", 2)
    run = resolved("base2new.sh", 1, resolve, method, dataset, seed, cfg, env.output, env.shots or None, env.tag)
    if env.phase not in ("both", "train", "test"):
        raise Stop(f"base2new.sh: PHASE must be both, train or test (got '{env.phase}')", 2)
    with run_lock(run.train_dir) as lock:
        if run.done:
            say(f"Done already: {method} {dataset} seed {seed} ({run.train_dir}, {run.test_dir})")
            return
        if run.runner:  # methods with their own pipeline (DPC's stages), holding this run's lock
            if env.phase != "both":
                raise Stop(f"base2new.sh: {method} runs all its stages at once (no PHASE)", 2)
            os.set_inheritable(lock.fileno(), True)
            script, *args = run.runner
            sys.stdout.flush()
            os.execvpe("bash", ["bash", os.path.join(REPO, script), *args, dataset, str(seed), *extra],
                       env.exported(SHOTS=str(run.shots), CFG=cfg or run.config))  # a YAML path stays a path
        common = ["--root", env.data, "--seed", str(seed), "--trainer", method, "--dataset-config-file",
                  dataset_config, "--config-file", run.config_file, *env.module_args()]
        opts = [*run.opts, *extra, "DATASET.NUM_SHOTS", str(run.shots)]
        eval_only = ["--eval-only"] if run.eval_only else []
        env = replace(env, shots=str(run.shots))
        if env.phase == "test":
            if not (finished(run.train_dir) or run.eval_only):
                raise Stop(f"base2new.sh: train first (no {run.train_dir}/results.json)", 1)
        elif finished(run.train_dir):
            say(f"Base phase done already: {run.train_dir}")
        else:
            train(env, *common, "--output-dir", run.train_dir, *eval_only, *opts, "DATASET.SUBSAMPLE_CLASSES", "base")
        if env.phase == "train":
            return
        if finished(run.test_dir):
            say(f"New phase done already: {run.test_dir}")
            return
        model = [] if run.eval_only else ["--model-dir", run.train_dir, *(["--load-epoch", env.loadep] * bool(env.loadep))]
        train(env, *common, "--output-dir", run.test_dir, "--eval-only", *model, *opts,
              "DATASET.SUBSAMPLE_CLASSES", "new")


def dpc(env, backbone, dataset, seed, extra=()):
    """DPC on `backbone`: stage 1 (the backbone's base-to-new run, reused when finished), stage 2
    (DPC_<BACKBONE> on the base classes) and the new-class evaluation."""
    stage1 = DPC_STAGE1.get(backbone, DPCStage1())
    shots = env.shots or "16"
    stage1_cfg = env.backbone_cfg or stage1.config
    stage1_opts = (*(() if env.backbone_cfg else stage1.config_opts), *stage1.opts)
    stage1_env = replace(env, shots=str(shots if stage1.shots is None else stage1.shots),
                         tag="" if env.backbone_cfg else stage1.tag)
    base2new(stage1_env, backbone, dataset, seed, stage1_cfg, (*stage1_opts, *extra))
    stage1_dir = resolve(backbone, dataset, seed, stage1_cfg, env.output, stage1_env.shots, stage1_env.tag).train_dir

    trainer = f"DPC_{backbone}"
    cfg = env.cfg or (METHODS[trainer].config if trainer in METHODS else "vit_b16_ep20")
    run = resolved("base2new.sh", 1, resolve, trainer, dataset, seed, cfg, env.output, shots, env.tag)
    env = replace(env, shots=shots)
    common = ["--root", env.data, "--seed", str(seed), "--trainer", trainer, "--dataset-config-file",
              dataset_config_file(dataset), "--config-file", run.config_file, *env.module_args()]
    # The run layout fixes the shots and the stage-1 folder; TRAINER.DPC.BACKBONE_EPOCH is the user's
    # (default -1: the latest stage-1 checkpoint).
    opts = [*extra, "DATASET.NUM_SHOTS", str(shots), "TRAINER.DPC.BACKBONE_DIR", stage1_dir]
    if finished(run.train_dir):
        say(f"DPC stage 2 done already: {run.train_dir}")
    else:
        train(env, *common, "--output-dir", run.train_dir, *opts, "DATASET.SUBSAMPLE_CLASSES", "base")
    if finished(run.test_dir):
        say(f"DPC new-class evaluation done already: {run.test_dir}")
    else:
        train(env, *common, "--output-dir", run.test_dir, "--eval-only", "--model-dir", run.train_dir, *opts,
              "DATASET.SUBSAMPLE_CLASSES", "new")


def axis(kind, text):
    items = split_list(text, kind)
    if not items:
        raise Stop(f"sweep.sh: no {kind} in '{text}'", 2)
    return items


def sweep(env, methods, datasets, seeds, extra=()):
    """A base-to-new grid, one run after another (each through base2new.sh); a failed run does not stop it."""
    methods, datasets, seeds = axis("methods", methods), axis("datasets", datasets), axis("seeds", seeds)
    failed, total, count = [], len(methods) * len(datasets) * len(seeds), 0
    for item in methods:
        method, cfg = parse_method(item)
        for dataset in datasets:
            for seed in seeds:
                count += 1
                say(f"=== [{count}/{total}] {item} {dataset} seed {seed}")
                command = ["bash", os.path.join(REPO, SCRIPTS["base2new"]), method, dataset, seed,
                           *([cfg] if ":" in item else []), *extra]
                if subprocess.call(command) != 0:
                    failed.append(f"{item} {dataset} seed {seed}")
    return summary("sweep", total, failed)


def summary(name, total, failed):
    say(f"=== {name}: {total - len(failed)} of {total} runs finished")
    for failure in failed:
        say(f"failed: {failure}")
    return 1 if failed else 0


def attempt(step, *args):
    """Run one step of a grid; its exit status (0: done), its error printed as the script prints it."""
    try:
        step(*args)
    except Stop as stop:
        if str(stop):
            print(stop, file=sys.stderr, flush=True)
        return stop.code
    return 0


def spec(method, cfg):
    return f"{method}:{cfg}" if cfg else method


# ----------------------------------------------------------------------------------------------
# Few-shot learning on all classes
# ----------------------------------------------------------------------------------------------
def fewshot(env, methods, datasets, seeds, shots="all", extra=()):
    """A few-shot grid (checked before anything runs); a failed run does not stop the others."""
    runs = resolved("fewshot", 2, protocol_grid, "fewshot", methods, datasets, seeds, shots or None, env.output,
                    env.tag)
    if not runs:
        raise Stop("fewshot.sh: empty grid", 2)
    failed = []
    for count, job in enumerate(runs, 1):
        name = f"{spec(job.method, job.cfg_arg)} {job.dataset} {job.shots}-shot seed {job.seed}"
        say(f"=== [{count}/{len(runs)}] few-shot {name}")
        status = attempt(fewshot_run, env, job.method, job.cfg_arg, job.dataset, job.shots, job.seed, extra)
        if status:
            failed.append(f"{name} (exit {status})")
    return summary("few-shot", len(runs), failed)


def fewshot_run(env, method, cfg, dataset, shots, seed, extra):
    run = resolved("fewshot", 1, resolve_fewshot, method, dataset, shots, seed, cfg, env.output, env.tag)
    with run_lock(run.run_dir):
        if finished(run.run_dir):
            say(f"Done already: {run.name} ({run.run_dir})")
            return
        common = ["--root", env.data, "--trainer", method, "--dataset-config-file",
                  dataset_config_file(dataset), "--config-file", run.config_file,
                  "--output-dir", run.run_dir, *env.module_args()]
        if run.eval_only:  # zero-shot CLIP: every class, the full test split, no seed
            train(env, *common, "--eval-only", *run.opts, *extra)
            return
        stage1 = []
        if run.backbone:  # DPC: the backbone's run of the same dataset, K and seed comes first
            status = fewshot(replace(env, tag=""), run.backbone, dataset, str(seed), str(shots), extra)
            if status:
                raise Stop("", status)
            stage1 = ["TRAINER.DPC.BACKBONE_DIR", run.stage1_dir]
        train(env, *common, "--seed", str(seed), *run.opts, *extra, "DATASET.NUM_SHOTS", str(shots),
              "DATASET.SUBSAMPLE_CLASSES", "all", *stage1)


# ----------------------------------------------------------------------------------------------
# Cross-dataset transfer and domain generalisation
# ----------------------------------------------------------------------------------------------
def xd(env, methods, seeds, targets="all", extra=()):
    """Each method's ImageNet source, then its evaluation on the targets (consecutive targets of one
    source in one process); a failed run does not stop the others."""
    if env.phase not in ("both", "train", "test"):
        raise Stop(f"xd.sh: PHASE must be both, train or test (got '{env.phase}')", 2)
    if env.phase == "train":
        targets = "none"
    env = replace(env, shots=env.shots or "16")
    runs = resolved("xd", 2, protocol_grid, "xd", methods, targets, seeds, env.shots, env.output, env.tag, tuple(extra))
    if not runs:
        raise Stop("xd.sh: empty grid", 2)
    failed, count = [], 0
    by_source = lambda run: (run.is_target, run.method, run.cfg_arg, run.seed)  # noqa: E731
    for (is_target, method, cfg, seed), group in itertools.groupby(runs, key=by_source):
        group = list(group)
        if not is_target:
            for job in group:
                count += 1
                name = f"{spec(method, cfg)} source (imagenet) seed {seed}"
                say(f"=== [{count}/{len(runs)}] xd {name}")
                status = attempt(xd_source, env, method, cfg, seed, extra)
                if status:
                    failed.append(f"{name} (exit {status})")
            continue
        # the consecutive targets of one source, evaluated together
        name = f"{spec(method, cfg)} imagenet -> {','.join(t.dataset for t in group)} seed {seed}"
        say(f"=== [{count + 1}-{count + len(group)}/{len(runs)}] xd {name}")
        count += len(group)
        try:
            targets = [resolve_xd(method, seed, t.dataset, cfg, env.output, env.shots, env.tag, extra) for t in group]
        except GridError as err:
            print(f"xd: {err}", file=sys.stderr, flush=True)
            failed.append(name)
            continue
        status = attempt(xd_targets, env, method, cfg, seed, targets, extra)
        failed += [f"{spec(method, cfg)} imagenet -> {t.dataset} seed {seed} (exit {status})"
                   for t in targets if not finished(t.run_dir)]
    return summary("xd", count, failed)


def xd_common(env, run):
    """train.py's arguments common to every run of the resolved method, and DPC's stage-1 options."""
    common = ["--root", env.data, "--trainer", run.method, "--config-file", run.config_file, *env.module_args()]
    return common, (["TRAINER.DPC.BACKBONE_DIR", run.stage1_dir] if run.backbone else [])


def xd_source(env, method, cfg, seed, extra):
    """The source of `method` and `seed` (zero-shot CLIP: its ImageNet evaluation)."""
    run = resolved("xd", 1, resolve_xd, method, seed, "", cfg, env.output, env.shots, env.tag, extra)
    with run_lock(run.run_dir):
        if finished(run.run_dir):
            say(f"Done already: {run.name} ({run.run_dir})")
            return
        if env.phase == "test":  # PHASE=test evaluates targets only
            if run.eval_only:  # zero-shot CLIP's targets need no source
                return
            raise Stop(f"xd.sh: the source run {run.run_dir} is not finished (no results.json); train it first: "
                       f"bash scripts/xd.sh {spec(method, cfg)} {seed} none", 1)
        common, stage1 = xd_common(env, run)
        common += ["--dataset-config-file", dataset_config_file(XD_SOURCE),
                   "--output-dir", run.run_dir]
        if run.eval_only:  # zero-shot CLIP: every class, the full test split, no seed
            train(env, *common, "--eval-only", *run.opts, *extra)
            return
        if run.backbone:  # DPC: the backbone's source run comes first
            status = xd(replace(env, phase="train", tag=""), run.backbone, str(seed), "none", extra)
            if status:
                raise Stop("", status)
        train(env, *common, "--seed", str(seed), *run.opts, *extra, "DATASET.NUM_SHOTS", env.shots,
              "DATASET.SUBSAMPLE_CLASSES", "all", *stage1)


def xd_targets(env, method, cfg, seed, targets, extra):
    """The unfinished `targets`, evaluated in one process (the interpreter and CLIP's imports started once)
    with the source's model."""
    pending = []
    for target in targets:
        if finished(target.run_dir):
            say(f"Done already: {target.dataset} ({target.run_dir})")
        else:
            pending.append(target)
    if not pending:
        return
    run = targets[0]
    common, stage1 = xd_common(env, run)
    if run.eval_only:  # zero-shot CLIP
        common += ["--eval-only", *run.opts, *extra]
    elif not finished(run.source_dir):  # never a half-trained source
        raise Stop(f"xd.sh: cannot evaluate {spec(method, cfg)} seed {seed} on {' '.join(t.dataset for t in pending)}: "
                   f"its source run {run.source_dir} is missing or unfinished (no results.json); finish it first: "
                   f"bash scripts/xd.sh {spec(method, cfg)} {seed} none", 1)
    else:  # no shots: the targets' data are not sampled
        common += ["--seed", str(seed), "--eval-only", "--model-dir", run.source_dir, "--load-epoch", env.loadep or "-1",
                   *run.opts, *extra, "DATASET.SUBSAMPLE_CLASSES", "all", *stage1]
    train(env, *[f"{t.dataset}={t.run_dir}" for t in pending], "--", *common, python_file="scripts/eval_targets.py")


# ----------------------------------------------------------------------------------------------
# Command line (the scripts' own)
# ----------------------------------------------------------------------------------------------
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in SCRIPTS:
        sys.exit(f"usage: sweeps.py {{{','.join(SCRIPTS)}}} ARGS... (see {__file__})")
    command, argv = argv[0], argv[1:]
    env = Env.read()
    try:
        if command == "base2new":
            (method, dataset, seed), cfg, extra = split_args(command, argv, 3)
            base2new(env, method, dataset, seed, cfg, extra)
        elif command == "dpc":
            (backbone, dataset, seed), _, extra = split_args(command, argv, 3, optional=False)
            dpc(env, backbone, dataset, seed, extra)
        elif command == "sweep":
            (methods, datasets, seeds), _, extra = split_args(command, argv, 3, optional=False)
            return sweep(env, methods, datasets, seeds, extra)
        elif command == "fewshot":
            (methods, datasets, seeds), shots, extra = split_args(command, argv, 3)
            return fewshot(env, methods, datasets, seeds, shots or "all", extra)
        else:
            (methods, seeds), targets, extra = split_args(command, argv, 2)
            return xd(env, methods, seeds, targets or "all", extra)
    except Stop as stop:
        if str(stop):
            print(stop, file=sys.stderr)
        return stop.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
