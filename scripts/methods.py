"""The base-to-new grid in one place: each method's paper config and launch hook, and the datasets.

Read by `scripts/base2new.sh` (through `python scripts/methods.py resolve ...`), `scripts/sweep.sh`,
`scripts/launch.py` and `parse_results.py`, so output paths and defaults are computed once.
Adding a method is one line in `METHODS`; a method that is not listed (an out-of-tree trainer)
still runs when a config is given: a name under `configs/trainers/<METHOD>/` or a YAML path.

Run layout (the CoCoOp base-to-new scripts, data_and_protocol.md §5.1):
    <OUTPUT>/base2new/train_base/<dataset>/shots_<K>/<METHOD>/<CFG>[_<TAG>]/seed<S>/
    <OUTPUT>/base2new/test_new/<dataset>/shots_<K>/<METHOD>/<CFG>[_<TAG>]/seed<S>/
A phase is done when its `results.json` exists (the trainer writes it atomically after testing).
"""
import argparse
import difflib
import os
import shlex
import sys
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Method:
    """How the sweep runs one method (see the module docstring for the layout)."""
    config: str = ""           # paper config: a name under configs/trainers/<config_dir>/ or a YAML path
    imagenet_config: str = ""  # ImageNet's own config where the paper used one ("" = `config`)
    opts: tuple = ()           # KEY VALUE opts of the paper setting, given to every phase
    config_dir: str = ""       # folder under configs/trainers ("" = the method name)
    eval_only: bool = False    # nothing to train: the base phase is an evaluation as well
    runner: tuple = ()         # a script (+ leading args) running the whole pipeline itself (below)
    label: str = ""            # name in result tables ("" = the method name)


# A `runner` replaces the train-then-test pair for methods with more stages (DPC). It is called
# as `bash <runner...> DATASET SEED [KEY VALUE ...]` with DATA, OUTPUT, SHOTS, CFG (the config
# name, `config` unless the user gave one), TAG, TRAINER_MODULE and PYTHON in the environment, and
# must write both phases' `results.json` into the run layout above under its METHOD and CFG,
# skipping finished phases like base2new.sh does.
DPC_RUNNER = "scripts/dpc/base2new.sh"

METHODS = {
    # CoOp's zero-shot protocol: a CoOp config supplies transforms, precision and test batch.
    "ZeroshotCLIP": Method("vit_b16", config_dir="CoOp", eval_only=True, label="CLIP (zero-shot)"),
    # The CoCoOp paper's CoOp row: 4 ctx tokens from "a photo of a", 200 epochs (ImageNet 50).
    "CoOp": Method("vit_b16_ctxv1", imagenet_config="vit_b16_ep50_ctxv1"),
    # KgCoOp's official base-to-new run: batch 128, 100 epochs, W = 8.0 on the command line.
    "KgCoOp": Method("vit_b16_ep100_ctxv1", opts=("TRAINER.COOP.W", "8.0")),
    "MaPLe": Method("vit_b16_c2_ep5_batch4_2ctx"),
    # Reconstructions (spec decision 9): MaPLe-style schedules chosen in dpl.md §4 / dgprompt.md §4.
    "DPL": Method("vit_b16_c2_ep5_batch4_4+4ctx", label="DPL (reconstructed)"),
    "DGPrompt": Method("vit_b16_c2_ep10_batch4_4+4ctx", label="DGPrompt (reconstructed)"),
    # DPC: stage 2 on top of the backbone's stage-1 run; the runner trains both (dpc.md §9).
    "DPC_CoOp": Method("vit_b16_ep20", config_dir="DPC/CoOp", runner=(DPC_RUNNER, "CoOp"), label="CoOp + DPC"),
    "DPC_KgCoOp": Method("vit_b16_ep20", config_dir="DPC/KgCoOp", runner=(DPC_RUNNER, "KgCoOp"),
                         label="KgCoOp + DPC"),
    "DPC_MaPLe": Method("vit_b16_ep20", config_dir="DPC/MaPLe", runner=(DPC_RUNNER, "MaPLe"), label="MaPLe + DPC"),
    "DPC_DPL": Method("vit_b16_ep20", config_dir="DPC/DPL", runner=(DPC_RUNNER, "DPL"),
                      label="DPL (reconstructed) + DPC"),
    "DPC_DGPrompt": Method("vit_b16_ep20", config_dir="DPC/DGPrompt", runner=(DPC_RUNNER, "DGPrompt"),
                           label="DGPrompt (reconstructed) + DPC"),
}

# The 11 base-to-new datasets in the papers' table order: config stem -> (table name, classes,
# test images). Sizes (data_and_protocol.md §1.1) order the launcher's queue, largest first.
DATASETS = {
    "imagenet": ("ImageNet", 1000, 50000),
    "caltech101": ("Caltech101", 100, 2465),
    "oxford_pets": ("OxfordPets", 37, 3669),
    "stanford_cars": ("StanfordCars", 196, 8041),
    "oxford_flowers": ("Flowers102", 102, 2463),
    "food101": ("Food101", 101, 30300),
    "fgvc_aircraft": ("FGVCAircraft", 100, 3333),
    "sun397": ("SUN397", 397, 19850),
    "dtd": ("DTD", 47, 1692),
    "eurosat": ("EuroSAT", 10, 8100),
    "ucf101": ("UCF101", 101, 3783),
}
SEEDS = (1, 2, 3)


def dataset_size(dataset, shots=16):
    """Images one base-to-new run touches once: the few-shot base train set plus both test halves."""
    _, n_cls, n_test = DATASETS.get(dataset, (dataset, 0, 0))
    return shots * ((n_cls + 1) // 2) + n_test


def label(method):
    entry = METHODS.get(method)
    return (entry.label if entry else "") or method


def default_config_file(method, entry):
    return os.path.join(REPO, "configs", "trainers", entry.config_dir or method, f"{entry.config}.yaml")


@dataclass(frozen=True)
class Run:
    """One base-to-new run: (method, config, dataset, seed) and where its two phases write."""
    method: str
    cfg_arg: str      # the CFG given by the user ("" = the method's paper config)
    config: str       # the config name
    folder: str       # the config folder in the run layout: `config`, or `<config>_<TAG>`
    config_file: str  # absolute YAML path ("" for runner methods)
    dataset: str
    seed: int
    opts: tuple
    eval_only: bool
    runner: tuple
    train_dir: str
    test_dir: str

    @property
    def done(self):
        return all(os.path.isfile(os.path.join(d, "results.json")) for d in (self.train_dir, self.test_dir))

    @property
    def started(self):
        return any(os.path.exists(d) for d in (self.train_dir, self.test_dir))

    @property
    def name(self):
        return f"{self.method}/{self.folder} {self.dataset} seed{self.seed}"


class GridError(ValueError):
    pass


def resolve(method, dataset, seed, cfg="", output="output", shots=16, tag=""):
    """The run for `method` on `dataset` with `seed`; `cfg` overrides the paper config."""
    stems = sorted(f[:-5] for f in os.listdir(os.path.join(REPO, "configs", "datasets")) if f.endswith(".yaml"))
    if dataset not in stems:
        guess = difflib.get_close_matches(dataset.lower(), stems, 1)
        raise GridError(f"Unknown dataset '{dataset}'." + (f" Did you mean '{guess[0]}'?" if guess else "")
                        + f" Known (configs/datasets/): {', '.join(stems)}")
    entry = METHODS.get(method, Method())
    name = cfg or (entry.imagenet_config if dataset == "imagenet" and entry.imagenet_config else entry.config)
    if not name:
        known = ", ".join(m for m, e in METHODS.items() if e.config)
        if method not in METHODS and _did_you_mean(method):
            raise GridError(f"Unknown method '{method}'.{_did_you_mean(method)} (Methods with default configs: "
                            f"{known}; any other method needs a config name or YAML path, METHOD:CFG.)")
        raise GridError(f"No default config for method '{method}': pass a config name or YAML path "
                        f"(methods with defaults: {known})")
    config_file = ""
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        config_file = os.path.abspath(name)
        name = os.path.splitext(os.path.basename(name))[0]
    else:
        config_file = os.path.join(REPO, "configs", "trainers", entry.config_dir or method, f"{name}.yaml")
    if config_file and not os.path.isfile(config_file):
        hint = _did_you_mean(method) if method not in METHODS else ""
        raise GridError(f"Config file not found: {config_file}{hint}")
    folder = f"{name}_{tag}" if tag else name
    dirs = [os.path.join(output, "base2new", phase, dataset, f"shots_{shots}", method, folder, f"seed{seed}")
            for phase in ("train_base", "test_new")]
    return Run(method, cfg, name, folder, config_file, dataset, int(seed), entry.opts, entry.eval_only, entry.runner,
               *dirs)


def _did_you_mean(method):
    """' Did you mean 'CoOp'?' for a near-miss of a known method name (case first), else ''."""
    by_lower = {m.lower(): m for m in METHODS}
    guess = [by_lower[method.lower()]] if method.lower() in by_lower else difflib.get_close_matches(method, METHODS, 1)
    return f" Did you mean '{guess[0]}'?" if guess else ""


def split_list(text, kind):
    """A comma list, or `all`: every method whose paper config exists / the 11 datasets / seeds 1-3."""
    if text != "all":
        return [item for item in text.split(",") if item]
    if kind == "methods":
        return [m for m, e in METHODS.items() if e.config and os.path.isfile(default_config_file(m, e))]
    return list(DATASETS) if kind == "datasets" else [str(s) for s in SEEDS]


def parse_method(spec):
    """`METHOD` or `METHOD:CFG` -> (method, cfg)."""
    method, _, cfg = spec.partition(":")
    return method, cfg


def grid(methods, datasets, seeds, output="output", shots=16, tag=""):
    """Every run of a sweep; `methods` items may carry a config as `METHOD:CFG`."""
    return [resolve(method, dataset, seed, cfg, output, shots, tag)
            for method, cfg in map(parse_method, split_list(methods, "methods"))
            for dataset in split_list(datasets, "datasets") for seed in split_list(seeds, "seeds")]


def _shell(args):
    """`resolve` as shell assignments for base2new.sh (values quoted for `eval`)."""
    env = os.environ
    try:
        run = resolve(args.method, args.dataset, args.seed, args.cfg, env.get("OUTPUT", "output"),
                      env.get("SHOTS", "16"), env.get("TAG", ""))
    except GridError as err:
        sys.exit(f"base2new.sh: {err}")
    q = shlex.quote
    print(f"CFG_NAME={q(run.config)}")
    print(f"CONFIG_FILE={q(run.config_file)}")
    print(f"TRAIN_DIR={q(run.train_dir)}")
    print(f"TEST_DIR={q(run.test_dir)}")
    print(f"EVAL_ONLY={int(run.eval_only)}")
    print(f"METHOD_OPTS=({' '.join(map(q, run.opts))})")
    print(f"RUNNER=({' '.join(q(os.path.join(REPO, run.runner[0])) if i == 0 else q(a) for i, a in enumerate(run.runner))})")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Method table queries for the shell scripts.")
    sub = parser.add_subparsers(dest="command", required=True)
    res = sub.add_parser("resolve", help="shell assignments for one run (OUTPUT, SHOTS, TAG from the env)")
    res.add_argument("method")
    res.add_argument("dataset")
    res.add_argument("seed")
    res.add_argument("cfg", nargs="?", default="")
    lst = sub.add_parser("list", help="expand a comma list or `all`, one item per line")
    lst.add_argument("kind", choices=("methods", "datasets", "seeds"))
    lst.add_argument("items")
    args = parser.parse_args(argv)
    if args.command == "resolve":
        _shell(args)
    else:
        print("\n".join(split_list(args.items, args.kind)))


if __name__ == "__main__":
    main()
