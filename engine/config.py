"""Config defaults with Dassl's key names, and `setup_cfg` in the reference merge order.

Order (docs/engine.md, "Config"): defaults -> every trainer's `TRAINER.<M>` hook ->
dataset YAML -> method YAML -> CLI flags -> trailing `KEY VALUE` opts -> freeze.
yacs' rules apply: unknown keys and type changes are errors (here with a hint).
"""
import difflib
import os
import re

import yaml
from yacs.config import CfgNode as CN

from engine.errors import ConfigError, MissingFileError, UnknownNameError
from engine.registry import TRAINERS

# Official key names some methods use (e.g. DPC's `SPLE.*`), mapped onto ours.
# Trainers add entries with `add_key_aliases` when they are imported. An entry is our key
# name, or a function `value -> [(our_key, value), ...]` for a value that needs translating
# or checking (an empty list accepts the official key and drops it).
KEY_ALIASES = {}


def add_key_aliases(mapping):
    KEY_ALIASES.update(mapping)


# ---- Dassl keys accepted but never read ------------------------------------------------------------
# Accepted so that official config files and scripts load; they have no effect here. Set to another
# value (YAML, flag or trailing option), each prints a warning (`check_dassl_keys`).
DASSL_KEYS_WITHOUT_EFFECT = {
    "VERSION": 1,
    "VERBOSE": True,
    "DATASET.SOURCE_DOMAINS": (),  # --source-domains (Dassl's domain-adaptation datasets)
    "DATASET.TARGET_DOMAINS": (),  # --target-domains
    "DATALOADER.K_TRANSFORMS": 1,  # several augmented views per image / the un-augmented image: no method
    "DATALOADER.RETURN_IMG0": False,  # here reads them (Dassl's semi-supervised and adaptation methods do)
    "MODEL.BACKBONE.PRETRAINED": True,  # CLIP is always built from its released weights
    "MODEL.HEAD.NAME": "",  # --head
    "OPTIM.STAGED_LR": False,  # per-layer learning rates of Dassl's own networks
    "OPTIM.NEW_LAYERS": (),
    "OPTIM.BASE_LR_MULT": 0.1,
    "TRAIN.COUNT_ITER": "train_x",  # Dassl's semi-supervised loops
    "TEST.EVALUATOR": "Classification",  # the only evaluator
    "TEST.COMPUTE_CMAT": False,  # Dassl's confusion-matrix file
}


def get_cfg_default():
    """Dassl's defaults for every key these trainers use."""
    _C = CN()
    _C.OUTPUT_DIR = "./output"
    _C.RESUME = ""
    _C.SEED = -1
    _C.USE_CUDA = True

    _C.INPUT = CN()
    _C.INPUT.SIZE = (224, 224)
    _C.INPUT.INTERPOLATION = "bilinear"
    _C.INPUT.TRANSFORMS = ()
    _C.INPUT.NO_TRANSFORM = False
    _C.INPUT.PIXEL_MEAN = [0.485, 0.456, 0.406]
    _C.INPUT.PIXEL_STD = [0.229, 0.224, 0.225]
    _C.INPUT.CROP_PADDING = 4
    _C.INPUT.RRCROP_SCALE = (0.08, 1.0)
    _C.INPUT.COLORJITTER_B = 0.4
    _C.INPUT.COLORJITTER_C = 0.4
    _C.INPUT.COLORJITTER_S = 0.4
    _C.INPUT.COLORJITTER_H = 0.1
    _C.INPUT.RGS_P = 0.2
    _C.INPUT.GB_P = 0.5
    _C.INPUT.GB_K = 21

    _C.DATASET = CN()
    _C.DATASET.ROOT = ""
    _C.DATASET.NAME = ""
    _C.DATASET.NUM_SHOTS = -1
    _C.DATASET.SUBSAMPLE_CLASSES = "all"  # all | base | new

    _C.DATALOADER = CN()
    _C.DATALOADER.NUM_WORKERS = 4
    _C.DATALOADER.PERSISTENT_WORKERS = True  # with workers: keep them across epochs (same batches)
    _C.DATALOADER.TRAIN_X = CN()
    _C.DATALOADER.TRAIN_X.SAMPLER = "RandomSampler"
    _C.DATALOADER.TRAIN_X.BATCH_SIZE = 32
    _C.DATALOADER.TEST = CN()
    _C.DATALOADER.TEST.SAMPLER = "SequentialSampler"
    _C.DATALOADER.TEST.BATCH_SIZE = 32

    _C.MODEL = CN()
    _C.MODEL.BACKBONE = CN()
    _C.MODEL.BACKBONE.NAME = ""  # CLIP name (e.g. ViT-B/16) or path to an OpenAI-format checkpoint

    _C.OPTIM = CN()
    _C.OPTIM.NAME = "adam"
    _C.OPTIM.LR = 0.0003
    _C.OPTIM.WEIGHT_DECAY = 5e-4
    _C.OPTIM.MOMENTUM = 0.9
    _C.OPTIM.SGD_DAMPNING = 0
    _C.OPTIM.SGD_NESTEROV = False
    _C.OPTIM.RMSPROP_ALPHA = 0.99
    _C.OPTIM.ADAM_BETA1 = 0.9
    _C.OPTIM.ADAM_BETA2 = 0.999
    _C.OPTIM.LR_SCHEDULER = "single_step"
    _C.OPTIM.STEPSIZE = (-1,)
    _C.OPTIM.GAMMA = 0.1
    _C.OPTIM.MAX_EPOCH = 10
    _C.OPTIM.WARMUP_EPOCH = -1
    _C.OPTIM.WARMUP_TYPE = "linear"
    _C.OPTIM.WARMUP_CONS_LR = 1e-5
    _C.OPTIM.WARMUP_MIN_LR = 1e-5
    _C.OPTIM.WARMUP_RECOUNT = True

    _C.TRAIN = CN()
    _C.TRAIN.CHECKPOINT_FREQ = 0
    _C.TRAIN.PRINT_FREQ = 10

    _C.TEST = CN()
    _C.TEST.PER_CLASS_RESULT = False
    _C.TEST.NO_TEST = False
    _C.TEST.SPLIT = "test"
    _C.TEST.FINAL_MODEL = "last_step"
    # Ours: compute image-independent text features once per evaluation (same numbers, faster).
    _C.TEST.CACHE_TEXT_FEATURES = True

    _C.TRAINER = CN()
    _C.TRAINER.NAME = ""

    for key, default in DASSL_KEYS_WITHOUT_EFFECT.items():
        _set_default(_C, key, default)
    # Refused when set (`check_dassl_keys`): Dassl loads it into its own network, which these methods
    # replace with CLIP, so it would silently do nothing (the official CoOp-family code ignores it too).
    _C.MODEL.INIT_WEIGHTS = ""
    return _C


def _set_default(cfg, key, value):
    *parents, leaf = key.split(".")
    for part in parents:
        cfg = cfg.setdefault(part, CN())
    cfg[leaf] = value


def _value(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def check_dassl_keys(cfg):
    """Warn once for each accepted-but-unread Dassl key set to another value; refuse MODEL.INIT_WEIGHTS."""
    if cfg.MODEL.INIT_WEIGHTS:
        raise ConfigError(
            f"MODEL.INIT_WEIGHTS ({cfg.MODEL.INIT_WEIGHTS}) is not supported: Dassl loads it into its own network, "
            "which these methods replace with CLIP. To evaluate a trained run pass --model-dir (its output folder) "
            "with --eval-only; to continue one, --resume DIR; CLIP's weights are MODEL.BACKBONE.NAME (--backbone)")
    for key, default in DASSL_KEYS_WITHOUT_EFFECT.items():
        value = _value(cfg, key)
        if (tuple(value) if isinstance(value, list) else value) != default:  # a YAML list and a tuple default agree
            print(f"Warning: {key} {value!r} has no effect here (a Dassl key, accepted so that official "
                  "configs and scripts load)")


def _flatten(node, prefix=""):
    for key, value in node.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, full + ".")
        else:
            yield full, value


def _unflatten(pairs):
    root = {}
    for full, value in pairs:
        node = root
        *parents, leaf = full.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return root


def _check_key(cfg, key, source):
    node = cfg
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, CN) or part not in node:
            prefix = ".".join(parts[:depth])
            siblings = list(node.keys()) if isinstance(node, CN) else []
            guess = difflib.get_close_matches(part, siblings, n=1)
            hint = f" Did you mean '{prefix + '.' if prefix else ''}{guess[0]}'?" if guess else ""
            if prefix == "TRAINER" and not guess:
                hint += (f" No loaded trainer defines TRAINER.{part}: if it belongs to a method kept outside the "
                         "repository, load that method with --trainer-module FILE_OR_MODULE.")
            raise UnknownNameError(f"Unknown config key '{key}' (from {source}).{hint}")
        node = node[part]


def _type_hint(cfg, key):
    """How to write a value of `key`'s type on the command line or in YAML."""
    node = _value(cfg, key)
    if isinstance(node, bool):
        return "it takes True or False"
    if isinstance(node, float):
        return "it is a float: write it with a decimal point (e.g. 8.0, not 8)"
    if isinstance(node, int):
        return "it is an integer: write it without a decimal point (e.g. 8, not 8.0)"
    if isinstance(node, (tuple, list)):
        return f"it is a list: write it like {tuple(node) or '(a, b)'}".replace("'", "")
    return "it is a string"


def _bad_value(cfg, err, source):
    """A ConfigError for yacs' type-mismatch ValueError, with the hint for the key's type."""
    found = re.search(r"for config key: (\S+)", str(err))
    hint = f"; {_type_hint(cfg, found.group(1))}" if found else ""
    return ConfigError(f"Bad value in {source}: {err}{hint}")


def _resolve_alias(key, value):
    alias = KEY_ALIASES.get(key, key)
    return alias(value) if callable(alias) else [(alias, value)]


def merge_from_file(cfg, path):
    """Merge a YAML file; official alias keys are renamed, unknown keys fail with a hint."""
    if os.path.isdir(path):
        raise ConfigError(f"{path} is a folder; a config file (YAML) is expected")
    if not os.path.isfile(path):
        where = "" if os.path.isabs(path) else f" (relative to the working directory {os.getcwd()})"
        repo_copy = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), path)
        hint = f"; did you mean {repo_copy}?" if not os.path.isabs(path) and os.path.isfile(repo_copy) else ""
        raise MissingFileError(f"Config file not found: {path}{where}{hint}")
    try:
        with open(path) as f:
            loaded = yaml.safe_load(f) or {}
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as err:
        raise ConfigError(f"Cannot read the config file {path}: {err}") from err
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} is not a config file: it holds a YAML {type(loaded).__name__}, not KEY: VALUE pairs")
    pairs = [pair for k, v in _flatten(loaded) for pair in _resolve_alias(k, v)]
    for key, _ in pairs:
        _check_key(cfg, key, path)
    try:
        cfg.merge_from_other_cfg(CN(_unflatten(pairs)))
    except ValueError as err:
        raise _bad_value(cfg, err, path) from err


def merge_from_list(cfg, opts):
    """Merge trailing `KEY VALUE` pairs from the command line."""
    if len(opts) % 2:
        raise ConfigError(f"Trailing options must be KEY VALUE pairs, got an odd number: {opts}")
    renamed = []
    for official_key, official_value in zip(opts[0::2], opts[1::2]):
        for key, value in _resolve_alias(official_key, official_value):
            _check_key(cfg, key, "the command line")
            renamed.append((key, value))
    for key, value in renamed:  # one at a time, so an error names its key
        try:
            cfg.merge_from_list([key, value])
        except ValueError as err:
            raise ConfigError(f"Bad command-line value {value!r} for {key}: {_type_hint(cfg, key)} ({err})") from err


def build_cfg():
    """Defaults plus every registered trainer's `TRAINER.<M>` node (before any YAML merge)."""
    cfg = get_cfg_default()
    for add_defaults in TRAINERS.config_hooks():
        add_defaults(cfg)
    return cfg


def setup_cfg(args):
    """The reference merge order: defaults, dataset YAML, method YAML, CLI flags, opts."""
    cfg = build_cfg()
    if args.dataset_config_file:
        merge_from_file(cfg, args.dataset_config_file)
    if args.config_file:
        merge_from_file(cfg, args.config_file)
    if args.root:
        cfg.DATASET.ROOT = args.root
    if args.output_dir:
        cfg.OUTPUT_DIR = args.output_dir
    if args.resume:
        cfg.RESUME = args.resume
    if args.source_domains:
        cfg.DATASET.SOURCE_DOMAINS = args.source_domains
    if args.target_domains:
        cfg.DATASET.TARGET_DOMAINS = args.target_domains
    if args.seed is not None and args.seed >= 0:  # seed 0 is a valid seed here (README "Differences")
        cfg.SEED = args.seed
    if args.transforms:
        cfg.INPUT.TRANSFORMS = args.transforms
    if args.trainer:
        cfg.TRAINER.NAME = args.trainer
    if args.backbone:
        cfg.MODEL.BACKBONE.NAME = args.backbone
    if args.head:
        cfg.MODEL.HEAD.NAME = args.head
    merge_from_list(cfg, args.opts)
    check_dassl_keys(cfg)
    cfg.freeze()
    return cfg
