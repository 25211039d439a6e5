"""Every protocol's grid in one place: each method's configs per protocol, launch hooks, datasets.

Read by the sweep scripts (`scripts/base2new.sh`, `sweep.sh`, `fewshot.sh`, `xd.sh`, `dpc/base2new.sh`,
all through `scripts/sweeps.py`), `scripts/launch.py` and `parse_results.py`, so output paths and defaults
are computed once.
Adding a method is one line in `METHODS`; a method that is not listed (an out-of-tree trainer)
still runs when a config is given: a name under `configs/trainers/<METHOD>/` or a YAML path.

Run layouts (those of the official scripts):
    base-to-new (CoCoOp's base2new scripts):
    <OUTPUT>/base2new/train_base/<dataset>/shots_<K>/<METHOD>/<CFG>[_<TAG>]/seed<S>/
    <OUTPUT>/base2new/test_new/<dataset>/shots_<K>/<METHOD>/<CFG>[_<TAG>]/seed<S>/
    few-shot, all classes (PromptSRC's few-shot layout):
    <OUTPUT>/few_shot/<dataset>/<METHOD>/<CFG>_<K>shots[/<TAG>]/seed<S>/
    cross-dataset and domain generalisation (CoCoOp's xd scripts): the ImageNet source and its targets
    <OUTPUT>/imagenet/<METHOD>/<CFG>_<K>shots[/<TAG>]/seed<S>/
    <OUTPUT>/evaluation/<METHOD>/<CFG>_<K>shots[/<TAG>]/<target>/seed<S>/
    zero-shot CLIP in the all-class protocols (CoOp's zeroshot.sh; no seed, one run per dataset):
    <OUTPUT>/ZeroshotCLIP/<CFG>/<dataset>/
A run (or phase) is done when its `results.json` exists (the trainer writes it atomically after testing).
"""
import difflib
import fcntl
import os
from contextlib import contextmanager
from dataclasses import dataclass

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Setting:
    """A method's configs in one all-class protocol: few-shot, or cross-dataset transfer (whose
    source model also gives the domain-generalisation numbers)."""
    config: str = ""          # config name (under the method's config folder) or YAML path of every run
    by_shots: tuple = ()      # few-shot configs by shot count: ((K_max, config), ...) ascending; the last also
                              # covers larger K
    imagenet_config: str = ""  # ImageNet's own config for every K ("" = as the other datasets)
    opts: tuple = ()          # KEY VALUE opts of every run (DPC: stage 2 repeats the backbone's prompt settings)
    dataset_opts: tuple = ()  # ((dataset stems, (KEY, VALUE, ...)), ...): extra opts on some datasets

    def config_for(self, dataset, shots):
        if dataset == "imagenet" and self.imagenet_config:
            return self.imagenet_config
        for max_shots, name in self.by_shots:
            if int(shots) <= max_shots:
                return name
        return self.by_shots[-1][1] if self.by_shots else self.config

    def opts_for(self, dataset):
        return (*self.opts, *(o for stems, opts in self.dataset_opts if dataset in stems for o in opts))


@dataclass(frozen=True)
class Method:
    """How the sweeps run one method (see the module docstring for the layouts)."""
    config: str = ""           # paper config: a name under configs/trainers/<config_dir>/ or a YAML path
    imagenet_config: str = ""  # ImageNet's own config where the paper used one ("" = `config`)
    opts: tuple = ()           # KEY VALUE opts of the paper setting, given to every phase
    config_dir: str = ""       # folder under configs/trainers ("" = the method name)
    eval_only: bool = False    # nothing to train: the base phase is an evaluation as well
    runner: tuple = ()         # a script (+ leading args) running the whole pipeline itself (below)
    label: str = ""            # name in result tables ("" = the method name)
    fewshot: Setting = None    # few-shot protocol (None: no setting; `METHOD:CFG` still runs it)
    xd: Setting = None         # cross-dataset / domain-generalisation source (None: as for few-shot)
    shots: int = None          # base-to-new shots when the sweep names none (None: 16; PromptKD: 0, unlabelled)

    @property
    def backbone(self):
        """The stage-1 method of a DPC entry ("" otherwise): its run of the same protocol comes first."""
        return self.runner[1] if self.runner[:1] == (DPC_RUNNER,) and len(self.runner) > 1 else ""


# A `runner` replaces the train-then-test pair for methods with more stages (DPC). It is called
# as `bash <runner...> DATASET SEED [KEY VALUE ...]` with DATA, OUTPUT, SHOTS, CFG (the config
# name, `config` unless the user gave one), TAG, TRAINER_MODULE and PYTHON in the environment, and
# must write both phases' `results.json` into the run layout above under its METHOD and CFG,
# skipping finished phases like base2new.sh does.
DPC_RUNNER = "scripts/dpc/base2new.sh"


@dataclass(frozen=True)
class DPCStage1:
    """DPC's base-to-new stage 1 on a backbone where it is not the backbone's own paper run (the DPC
    repository's re-runs). A user's stage-1 config (BACKBONE_CFG) replaces `config`, `config_opts` and
    `tag`; `opts` and `shots` describe the run whatever its config."""
    config: str = ""         # "" = the backbone's paper config
    config_opts: tuple = ()  # KEY VALUE opts that go with `config`
    tag: str = ""            # folder tag keeping these runs apart from the backbone's own
    opts: tuple = ()         # KEY VALUE opts of every stage-1 run
    shots: int = None        # None = the DPC run's shots


# Read by scripts/sweeps.py (DPC's runs), scripts/recipes.py (the DPC tables' backbone columns) and
# benchmarks/grid_cost.py (the cost of CoOp's stage 1). CoOp: the batch-4, 10-epoch config with 4 random
# context tokens; PromptKD: the unlabelled batch-32 distillation on every class (shots_0).
DPC_STAGE1 = {
    "CoOp": DPCStage1("vit_b16_bs4_ep10_lr35", ("TRAINER.COOP.N_CTX", "4"), tag="nctx4"),
    "IVLP": DPCStage1("vit_b16_c2_ep20_batch4_4+4ctx"),
    "PromptSRC": DPCStage1("vit_b16_c2_ep20_batch4_4+4ctx"),
    "PromptKD": DPCStage1("vit_b16_c2_ep20_batch32_4+4ctx", opts=("TRAINER.PROMPTKD.KD_WEIGHT", "1000.0"), shots=0),
}

# Per-protocol settings: few-shot as recommended for each method (CoOp's own main.sh; KgCoOp's author's
# 4-shot setting at every K; MaPLe's and the reconstructions' base-to-new configs; DGPrompt's 20 epochs
# up to 4 shots), cross-dataset as the official xd scripts (CoOp: the CoCoOp paper's row; KgCoOp: the
# author's DG run, which loaded epoch 25 of its 100-epoch config folder). DPC's stage 2 repeats the
# backbone's prompt settings of the protocol (e.g. CoOp's 16 random few-shot tokens, MaPLe's depth 3).
COOP_FEWSHOT = Setting(by_shots=((1, "vit_b16_ep50"), (4, "vit_b16_ep100"), (16, "vit_b16")),
                       imagenet_config="vit_b16_ep50")
KGCOOP_W = ("TRAINER.COOP.W", "8.0")
METHODS = {
    # CoOp's zero-shot protocol: a CoOp config supplies transforms, precision and test batch.
    "ZeroshotCLIP": Method("vit_b16", config_dir="CoOp", eval_only=True, label="CLIP (zero-shot)",
                           fewshot=Setting("vit_b16"), xd=Setting("vit_b16")),
    # The CoCoOp paper's CoOp row: 4 ctx tokens from "a photo of a", 200 epochs (ImageNet 50).
    "CoOp": Method("vit_b16_ctxv1", imagenet_config="vit_b16_ep50_ctxv1", fewshot=COOP_FEWSHOT,
                   xd=Setting("vit_b16_ep50_ctxv1")),
    # KgCoOp's official base-to-new run: batch 128, 100 epochs, W = 8.0 on the command line.
    "KgCoOp": Method("vit_b16_ep100_ctxv1", opts=KGCOOP_W,
                     fewshot=Setting("vit_b16_ep100_ctxv1", opts=(*KGCOOP_W, "DATALOADER.TRAIN_X.BATCH_SIZE", "32")),
                     xd=Setting("vit_b16_ep100_ctxv1", opts=(*KGCOOP_W, "OPTIM.MAX_EPOCH", "25"))),
    "MaPLe": Method("vit_b16_c2_ep5_batch4_2ctx", fewshot=Setting("vit_b16_c2_ep5_batch4_2ctx"),
                    xd=Setting("vit_b16_c2_ep5_batch4_2ctx_cross_datasets")),
    # The PromptSRC repository's IVLP baseline and PromptSRC itself (20 epochs, 4+4 tokens, depth 9);
    # PromptSRC's few-shot config notes GPA 45/5 for five fine-grained datasets.
    "IVLP": Method("vit_b16_c2_ep20_batch4_4+4ctx"),
    "PromptSRC": Method("vit_b16_c2_ep20_batch4_4+4ctx",
                        fewshot=Setting("vit_b16_c2_ep50_batch4_4+4ctx_few_shot", dataset_opts=(
                            (("stanford_cars", "oxford_flowers", "fgvc_aircraft", "dtd", "eurosat"),
                             ("TRAINER.PROMPTSRC.GPA_MEAN", "45", "TRAINER.PROMPTSRC.GPA_STD", "5")),)),
                        xd=Setting("vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets")),
    # Unlabelled distillation from a ViT-L/14 PromptSRC teacher (a prerequisite: teacher_model/<DATASET>/...)
    # on every class's whole train split (shots_0); the official scripts pass KD_WEIGHT 1000.
    "PromptKD": Method("vit_b16_c2_ep20_batch8_4+4ctx", opts=("TRAINER.PROMPTKD.KD_WEIGHT", "1000.0"), shots=0),
    # Reconstructions (labelled as such everywhere): MaPLe-style schedules (docs/methods/dpl.md, dgprompt.md).
    "DPL": Method("vit_b16_c2_ep5_batch4_4+4ctx", label="DPL (reconstructed)",
                  fewshot=Setting("vit_b16_c2_ep5_batch4_4+4ctx"),
                  xd=Setting("vit_b16_c2_ep2_batch4_4+4ctx_cross_datasets")),
    "DGPrompt": Method("vit_b16_c2_ep10_batch4_4+4ctx", label="DGPrompt (reconstructed)",
                       fewshot=Setting(by_shots=((4, "vit_b16_c2_ep20_batch4_4+4ctx"),
                                                 (16, "vit_b16_c2_ep10_batch4_4+4ctx"))),
                       xd=Setting("vit_b16_c2_ep2_batch4_4+4ctx_cross_datasets")),
    # DPC: stage 2 on top of the backbone's stage-1 run; the runner trains both (docs/methods/dpc.md).
    "DPC_CoOp": Method("vit_b16_ep20", config_dir="DPC/CoOp", runner=(DPC_RUNNER, "CoOp"), label="CoOp + DPC",
                       fewshot=Setting("vit_b16_ep20", opts=("TRAINER.COOP.N_CTX", "16")),
                       xd=Setting("vit_b16_ep20", opts=("TRAINER.COOP.CTX_INIT", "a photo of a"))),
    "DPC_KgCoOp": Method("vit_b16_ep20", config_dir="DPC/KgCoOp", runner=(DPC_RUNNER, "KgCoOp"),
                         label="KgCoOp + DPC", fewshot=Setting("vit_b16_ep20"), xd=Setting("vit_b16_ep20")),
    "DPC_MaPLe": Method("vit_b16_ep20", config_dir="DPC/MaPLe", runner=(DPC_RUNNER, "MaPLe"), label="MaPLe + DPC",
                        fewshot=Setting("vit_b16_ep20"),
                        xd=Setting("vit_b16_ep20", opts=("TRAINER.MAPLE.PROMPT_DEPTH", "3"))),
    "DPC_IVLP": Method("vit_b16_ep20", config_dir="DPC/IVLP", runner=(DPC_RUNNER, "IVLP"), label="IVLP + DPC"),
    "DPC_PromptSRC": Method("vit_b16_ep20", config_dir="DPC/PromptSRC", runner=(DPC_RUNNER, "PromptSRC"),
                            label="PromptSRC + DPC", fewshot=Setting("vit_b16_ep20"),
                            xd=Setting("vit_b16_ep20", opts=("TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "3",
                                                             "TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "3"))),
    "DPC_PromptKD": Method("vit_b16_c2_ep20_batch4_4+4ctx", config_dir="DPC/PromptKD",
                           runner=(DPC_RUNNER, "PromptKD"), label="PromptKD + DPC"),
    "DPC_DPL": Method("vit_b16_ep20", config_dir="DPC/DPL", runner=(DPC_RUNNER, "DPL"),
                      label="DPL (reconstructed) + DPC", fewshot=Setting("vit_b16_ep20"),
                      xd=Setting("vit_b16_ep20", opts=("TRAINER.DPL.DEPTH_V", "3", "TRAINER.DPL.DEPTH_T", "3"))),
    "DPC_DGPrompt": Method("vit_b16_ep20", config_dir="DPC/DGPrompt", runner=(DPC_RUNNER, "DGPrompt"),
                           label="DGPrompt (reconstructed) + DPC", fewshot=Setting("vit_b16_ep20"),
                           xd=Setting("vit_b16_ep20", opts=("TRAINER.DGPROMPT.DEPTH", "3"))),
}

# The 11 base-to-new datasets in the papers' table order: config stem -> (table name, classes,
# test images). Sizes (docs/data.md) order the launcher's queue, largest first.
PAPER_DATASETS = {
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
# The ImageNet variants (test only), targets of domain generalisation; sizes as above.
VARIANTS = {
    "imagenetv2": ("ImageNet-V2", 1000, 10000),
    "imagenet_sketch": ("ImageNet-Sketch", 1000, 50889),
    "imagenet_a": ("ImageNet-A", 200, 7500),
    "imagenet_r": ("ImageNet-R", 200, 30000),
}
XD_SOURCE = "imagenet"
XD_TARGETS = tuple(d for d in PAPER_DATASETS if d != XD_SOURCE)  # cross-dataset transfer
DG_TARGETS = tuple(VARIANTS)                              # domain generalisation
FEWSHOT_SHOTS = (1, 2, 4, 8, 16)


def dataset_size(dataset, shots=16):
    """Images one base-to-new run touches once: the few-shot base train set plus both test halves."""
    _, n_cls, n_test = PAPER_DATASETS.get(dataset, (dataset, 0, 0))
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
    shots: int = 16

    @property
    def done(self):
        return all(os.path.isfile(os.path.join(d, "results.json")) for d in (self.train_dir, self.test_dir))

    @property
    def started(self):
        return any(os.path.exists(d) for d in (self.train_dir, self.test_dir))

    @property
    def name(self):
        return f"{self.method}/{self.folder} {self.dataset} seed{self.seed}"

    @property
    def size(self):
        """Images the run touches once (orders the launcher's queue, largest first)."""
        return dataset_size(self.dataset, self.shots)

    # The job interface scripts/launch.py uses for every protocol's runs.
    @property
    def run_dir(self):
        return self.train_dir

    @property
    def lock_file(self):
        """The lock base2new.sh holds while the run is in progress."""
        return run_lock_file(self.train_dir)

    @property
    def stage(self):
        """Launch order: 0 plain runs, 1 runs with a runner (DPC, which reuse a plain run as stage 1)."""
        return int(bool(self.runner))

    needs = ()  # run directories that must be finished first

    @property
    def log_name(self):
        return f"{self.method}-{self.folder}-{self.dataset}-seed{self.seed}.log".replace(os.sep, "_")

    def command(self, opts=()):
        return ["bash", os.path.join(REPO, "scripts", "base2new.sh"), self.method, self.dataset, str(self.seed),
                *([self.cfg_arg] if self.cfg_arg else []), *opts]


class GridError(ValueError):
    pass


def run_lock_file(run_dir):
    """The lock a run's script holds while the run is in progress: a hidden `.<run folder>.lock` beside it."""
    run_dir = os.path.abspath(run_dir)
    return os.path.join(os.path.dirname(run_dir), f".{os.path.basename(run_dir)}.lock")


@contextmanager
def run_lock(run_dir):
    """Hold the run's lock (`run_lock_file`); a second caller waits here. Yields the open lock file."""
    path = run_lock_file(run_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield lock


def dataset_config_file(dataset):
    """configs/datasets/<dataset>.yaml, the dataset's config (it exists for every dataset the scripts know)."""
    return os.path.join(REPO, "configs", "datasets", f"{dataset}.yaml")


def resolve(method, dataset, seed, cfg="", output="output", shots=None, tag=""):
    """The run for `method` on `dataset` with `seed`; `cfg` overrides the paper config, `shots` the
    method's shot count (its `Method.shots`, else 16)."""
    stems = sorted(f[:-5] for f in os.listdir(os.path.join(REPO, "configs", "datasets")) if f.endswith(".yaml"))
    if dataset not in stems:
        guess = difflib.get_close_matches(dataset.lower(), stems, 1)
        raise GridError(f"Unknown dataset '{dataset}'." + (f" Did you mean '{guess[0]}'?" if guess else "")
                        + f" Known (configs/datasets/): {', '.join(stems)}")
    entry = METHODS.get(method, Method())
    if shots in (None, ""):
        shots = 16 if entry.shots is None else entry.shots
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
               *dirs, shots=int(shots))


def _did_you_mean(method):
    """' Did you mean 'CoOp'?' for a near-miss of a known method name (case first), else ''."""
    by_lower = {m.lower(): m for m in METHODS}
    guess = [by_lower[method.lower()]] if method.lower() in by_lower else difflib.get_close_matches(method, METHODS, 1)
    return f" Did you mean '{guess[0]}'?" if guess else ""


def split_list(text, kind):
    """A comma list, or `all`: every method whose paper config exists / the 11 datasets / seeds 1-3 /
    shots 1,2,4,8,16 / the 14 cross-dataset and domain-generalisation targets (also `xd`: the 10 datasets,
    `dg`: the 4 ImageNet variants, `none`)."""
    if kind == "targets" and text in ("xd", "dg", "none"):
        return list({"xd": XD_TARGETS, "dg": DG_TARGETS, "none": ()}[text])
    if text != "all":
        return [item for item in text.split(",") if item]
    if kind == "methods":
        return [m for m, e in METHODS.items() if e.config and os.path.isfile(default_config_file(m, e))]
    return {"datasets": list(PAPER_DATASETS), "seeds": [str(s) for s in SEEDS],
            "shots": [str(k) for k in FEWSHOT_SHOTS], "targets": [*XD_TARGETS, *DG_TARGETS]}[kind]


def parse_method(spec):
    """`METHOD` or `METHOD:CFG` -> (method, cfg)."""
    method, _, cfg = spec.partition(":")
    return method, cfg


def grid(methods, datasets, seeds, output="output", shots=None, tag=""):
    """Every run of a sweep; `methods` items may carry a config as `METHOD:CFG`; shots None: each method's."""
    return [resolve(method, dataset, seed, cfg, output, shots, tag)
            for method, cfg in map(parse_method, split_list(methods, "methods"))
            for dataset in split_list(datasets, "datasets") for seed in split_list(seeds, "seeds")]


# ----------------------------------------------------------------------------------------------
# Few-shot and cross-dataset protocols
# ----------------------------------------------------------------------------------------------
def protocol_methods(text, protocol):
    """`all`: every method with a setting for `protocol` (its config files present); else as `split_list`."""
    if text != "all":
        return split_list(text, "methods")
    return [m for m, e in METHODS.items() if getattr(e, protocol) is not None
            and all(os.path.isfile(config_path(m, e, name)[1]) for name in setting_configs(getattr(e, protocol)))]


def setting_configs(setting):
    return {setting.config, setting.imagenet_config, *(name for _, name in setting.by_shots)} - {""}


def config_path(method, entry, name):
    """(config name, absolute YAML path) of a config name under the method's folder, or of a YAML path."""
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        return os.path.splitext(os.path.basename(name))[0], os.path.abspath(name)
    return name, os.path.join(REPO, "configs", "trainers", entry.config_dir or method, f"{name}.yaml")


def zero_shot_dir(output, config, dataset):
    return os.path.join(output, "ZeroshotCLIP", config, dataset)


def class_specific_context(config_file, opts):
    """Whether CoOp's class-specific context (`TRAINER.COOP.CSC`) is on, from the YAML and KEY VALUE opts."""
    with open(config_file) as f:
        value = (((yaml.safe_load(f) or {}).get("TRAINER") or {}).get("COOP") or {}).get("CSC", False)
    for key, item in zip(opts[0::2], opts[1::2]):
        if key == "TRAINER.COOP.CSC":
            value = item
    return str(value).strip().lower() == "true"


@dataclass(frozen=True)
class ProtocolRun:
    """One job of the few-shot or cross-dataset protocol: a training run (a few-shot run or the
    cross-dataset source; for zero-shot CLIP, its evaluation on that dataset) or the evaluation of a
    source model on a cross-dataset / domain-generalisation target. Done = `results.json` exists."""
    protocol: str      # fewshot | xd
    method: str
    cfg_arg: str       # the CFG given by the user ("" = the method's protocol config)
    config: str        # the config name
    config_file: str
    folder: str        # `<CFG>_<K>shots` (zero-shot CLIP: `<CFG>`)
    dataset: str       # the dataset trained on, or the target evaluated
    shots: int
    seed: int
    opts: tuple        # the method's protocol opts
    eval_only: bool    # zero-shot CLIP
    run_dir: str
    source_dir: str = ""  # a target's source run ("" for zero-shot CLIP and training runs)
    backbone: str = ""    # DPC: the stage-1 method, whose run of the same protocol is `stage1_dir`
    stage1_dir: str = ""
    tag: str = ""

    @property
    def is_target(self):
        return self.protocol == "xd" and self.dataset != XD_SOURCE

    @property
    def done(self):
        return os.path.isfile(os.path.join(self.run_dir, "results.json"))

    @property
    def started(self):
        return os.path.exists(self.run_dir)

    @property
    def name(self):
        if self.eval_only:
            return f"{self.method}/{self.folder} {self.dataset}"
        where = f"{XD_SOURCE} -> {self.dataset}" if self.is_target else self.dataset
        return f"{self.protocol} {self.method}/{self.folder}{'/' + self.tag if self.tag else ''} {where} seed{self.seed}"

    @property
    def lock_file(self):
        return run_lock_file(self.run_dir)

    @property
    def stage(self):
        """Launch order: 0 plain runs, 1 DPC runs (stage 1 first), 2 target evaluations (source first)."""
        return 2 if self.source_dir else int(bool(self.backbone))

    @property
    def needs(self):
        return (self.source_dir,) if self.source_dir else ()

    @property
    def size(self):
        """Images the job touches once: its train set (if it trains) and its test set."""
        _, n_cls, n_test = {**PAPER_DATASETS, **VARIANTS}.get(self.dataset, (self.dataset, 0, 0))
        return n_test + (0 if self.eval_only or self.is_target else self.shots * n_cls)

    @property
    def log_name(self):
        parts = [self.protocol, self.method, self.folder, *([self.tag] if self.tag else []), self.dataset,
                 *([] if self.eval_only else [f"seed{self.seed}"])]
        return "-".join(parts).replace(os.sep, "_") + ".log"

    def command(self, opts=()):
        spec = f"{self.method}:{self.cfg_arg}" if self.cfg_arg else self.method
        if self.protocol == "fewshot":
            return ["bash", os.path.join(REPO, "scripts", "fewshot.sh"), spec, self.dataset, str(self.seed),
                    str(self.shots), *opts]
        if not self.is_target:
            return ["bash", os.path.join(REPO, "scripts", "xd.sh"), spec, str(self.seed), "none", *opts]
        # the source is finished when a target starts; PHASE=test never trains it
        return ["env", "PHASE=test", "bash", os.path.join(REPO, "scripts", "xd.sh"), spec, str(self.seed),
                self.dataset, *opts]


def _protocol_config(method, protocol, dataset, shots, cfg):
    entry = METHODS.get(method, Method())
    setting = getattr(entry, protocol) or Setting()
    name = cfg or setting.config_for(dataset, shots)
    if not name:
        known = ", ".join(m for m, e in METHODS.items() if getattr(e, protocol) is not None)
        raise GridError(f"No {protocol} config for method '{method}': pass METHOD:CFG, a config name or YAML "
                        f"path (methods with one: {known})")
    name, config_file = config_path(method, entry, name)
    if not os.path.isfile(config_file):
        raise GridError(f"Config file not found: {config_file}")
    return entry, setting, name, config_file


def resolve_fewshot(method, dataset, shots, seed, cfg="", output="output", tag=""):
    """The few-shot run of `method` on all classes of `dataset` with `shots` per class and `seed`."""
    if not os.path.isfile(dataset_config_file(dataset)):
        raise GridError(f"Unknown dataset '{dataset}' (no configs/datasets/{dataset}.yaml)")
    shots, seed = int(shots), int(seed)
    entry, setting, name, config_file = _protocol_config(method, "fewshot", dataset, shots, cfg)
    if entry.eval_only:
        return ProtocolRun("fewshot", method, cfg, name, config_file, name, dataset, shots, seed,
                           setting.opts_for(dataset), True, zero_shot_dir(output, name, dataset))
    folder = f"{name}_{shots}shots"
    run_dir = os.path.join(output, "few_shot", dataset, method, folder, *([tag] if tag else []), f"seed{seed}")
    stage1 = resolve_fewshot(entry.backbone, dataset, shots, seed, "", output).run_dir if entry.backbone else ""
    return ProtocolRun("fewshot", method, cfg, name, config_file, folder, dataset, shots, seed,
                       setting.opts_for(dataset), False, run_dir, "", entry.backbone, stage1, tag)


def resolve_xd(method, seed, target="", cfg="", output="output", shots=16, tag="", user_opts=()):
    """The cross-dataset source run of `method` and `seed` (ImageNet, all classes, `shots` per class), or,
    with `target`, the evaluation of that source's model on `target`. A class-specific context is refused:
    it holds one context per ImageNet class and fits no other class list."""
    target = target or XD_SOURCE
    if not os.path.isfile(dataset_config_file(target)):
        raise GridError(f"Unknown target '{target}' (no configs/datasets/{target}.yaml)")
    shots, seed = int(shots), int(seed)
    entry, setting, name, config_file = _protocol_config(method, "xd", XD_SOURCE, shots, cfg)
    opts = setting.opts_for(XD_SOURCE)  # a target loads the source's model: the source's settings
    if not entry.eval_only and class_specific_context(config_file, (*opts, *user_opts)):
        raise GridError(f"{method} ({config_file}): a class-specific context (TRAINER.COOP.CSC True) has one context "
                        "per ImageNet class and cannot be evaluated on other datasets' classes; cross-dataset "
                        "transfer needs a unified context (TRAINER.COOP.CSC False)")
    if entry.eval_only:
        return ProtocolRun("xd", method, cfg, name, config_file, name, target, shots, seed, opts, True,
                           zero_shot_dir(output, name, target))
    folder = f"{name}_{shots}shots"
    variant = [tag] if tag else []
    source_dir = os.path.join(output, XD_SOURCE, method, folder, *variant, f"seed{seed}")
    run_dir = source_dir if target == XD_SOURCE else os.path.join(output, "evaluation", method, folder, *variant,
                                                                   target, f"seed{seed}")
    stage1 = resolve_xd(entry.backbone, seed, "", "", output, shots, "", user_opts).run_dir if entry.backbone else ""
    return ProtocolRun("xd", method, cfg, name, config_file, folder, target, shots, seed, opts, False, run_dir,
                       source_dir if target != XD_SOURCE else "", entry.backbone, stage1, tag)


def protocol_grid(protocol, methods, datasets, seeds, shots=None, output="output", tag="", opts=()):
    """Every job of a few-shot grid (methods x datasets x shots x seeds) or of a cross-dataset grid (per
    method and seed: the source, then its evaluation on each target in `datasets`), in that order, each
    zero-shot CLIP evaluation once. Errors (unknown names, a class-specific context) come before any work."""
    datasets = split_list(datasets, "datasets" if protocol == "fewshot" else "targets")
    seeds = split_list(seeds, "seeds")
    runs = {}
    for method, cfg in map(parse_method, protocol_methods(methods, protocol)):
        if protocol == "fewshot":
            jobs = [resolve_fewshot(method, d, k, s, cfg, output, tag)
                    for d in datasets for k in split_list(shots or "all", "shots") for s in seeds]
        else:
            jobs = [resolve_xd(method, s, t, cfg, output, shots or 16, tag, opts) for s in seeds for t in ["", *datasets]]
        for job in jobs:
            runs.setdefault(job.run_dir, job)
    return list(runs.values())
