"""Train or evaluate a prompt-learning method (the CoOp / Dassl command line).

    python train.py --root DATA --seed 1 --trainer CoOp \
        --dataset-config-file configs/datasets/caltech101.yaml \
        --config-file configs/trainers/CoOp/vit_b16_ep50.yaml \
        --output-dir output/... DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES base

Add `--eval-only --model-dir DIR --load-epoch N` to evaluate a trained model.
`--trainer-module path/to/my_method.py` (or a dotted import path) loads a trainer kept
outside the repository before the config is built.
"""
import argparse
import importlib
import importlib.util
import os
import sys

# Only the standard library at import time: `train.py --help` answers without loading torch.
DEBUG_ENV = "TRAIN_DEBUG"


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=str, default="", help="path to the dataset root")
    parser.add_argument("--output-dir", type=str, default="", help="output directory")
    parser.add_argument("--resume", type=str, default="", help="checkpoint directory to resume from")
    parser.add_argument("--seed", type=int, default=-1, help="seed (>= 0 seeds random, numpy and torch)")
    parser.add_argument("--source-domains", type=str, nargs="+", help="DATASET.SOURCE_DOMAINS (Dassl; unused here)")
    parser.add_argument("--target-domains", type=str, nargs="+", help="DATASET.TARGET_DOMAINS (Dassl; unused here)")
    parser.add_argument("--transforms", type=str, nargs="+", help="data augmentation methods")
    parser.add_argument("--config-file", type=str, default="", help="method config file")
    parser.add_argument("--dataset-config-file", type=str, default="", help="dataset config file")
    parser.add_argument("--trainer", type=str, default="", help="name of the trainer")
    parser.add_argument("--backbone", type=str, default="", help="CLIP model name or checkpoint path")
    parser.add_argument("--head", type=str, default="", help="MODEL.HEAD.NAME (Dassl; unused here)")
    parser.add_argument("--eval-only", action="store_true", help="evaluation only")
    parser.add_argument("--model-dir", type=str, default="", help="load the model from this directory")
    parser.add_argument("--load-epoch", type=int, help="load the checkpoint of this epoch (-1: latest)")
    parser.add_argument("--no-train", action="store_true", help="build everything, do not train or test")
    parser.add_argument("--trainer-module", type=str, action="append", default=[],
                        help="file or import path of an out-of-tree trainer to register (repeatable)")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="run in an output folder whose config.yaml records another configuration "
                             "(its checkpoints are resumed, its config.yaml and results.json replaced)")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of every error, user errors included (or set {DEBUG_ENV}=1)")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser


def import_trainer_module(spec):
    """Import a user's trainer file (`path/to/x.py`) or module (`pkg.x`) so it registers itself."""
    from engine.errors import MissingFileError

    if spec.endswith(".py") or os.path.sep in spec:
        if not os.path.isfile(spec):
            where = "" if os.path.isabs(spec) else f" (relative to the working directory {os.getcwd()})"
            raise MissingFileError(f"--trainer-module {spec}: no such file{where}")
        name = os.path.splitext(os.path.basename(spec))[0]
        module_spec = importlib.util.spec_from_file_location(name, spec)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
        return module
    return importlib.import_module(spec)


def print_args(args, cfg):
    print("***************")
    print("** Arguments **")
    print("***************")
    for key in sorted(vars(args)):
        print(f"{key}: {getattr(args, key)}")
    print("************")
    print("** Config **")
    print("************")
    print(cfg)


def main(argv=None):
    args = build_parser().parse_args(argv)
    import datasets  # noqa: F401  (registers the datasets)
    import trainers  # noqa: F401  (registers the trainers)
    from engine.config import build_cfg, setup_cfg
    from engine.errors import ConfigError
    from engine.io import atomic_write_text
    from engine.logger import setup_logger
    from engine.registry import TRAINERS
    from engine.run_folder import CONFIG_FILE, check_output_config, lock_output_dir, remove_stale_temp_files
    from engine.trainer import build_trainer, set_random_seed

    for spec in args.trainer_module:
        import_trainer_module(spec)
    cfg = setup_cfg(args)
    if args.eval_only and not args.model_dir and TRAINERS.get(cfg.TRAINER.NAME).trainable:
        raise ConfigError(f"--eval-only without --model-dir would evaluate {cfg.TRAINER.NAME}'s untrained prompts: "
                          "pass --model-dir (the training run's output folder) and --load-epoch")
    lock = lock_output_dir(cfg.OUTPUT_DIR)  # held until this process exits
    try:
        remove_stale_temp_files(cfg.OUTPUT_DIR)
        check_output_config(cfg.OUTPUT_DIR, cfg, build_cfg(), args.allow_config_change)
        if cfg.SEED >= 0:
            print(f"Setting fixed seed: {cfg.SEED}")
            set_random_seed(cfg.SEED)
        close_log = setup_logger(cfg.OUTPUT_DIR)
        try:
            print_args(args, cfg)
            trainer = build_trainer(cfg)
            if args.eval_only:
                trainer.load_model(args.model_dir, epoch=args.load_epoch)
            # written once the data, the model and any checkpoint have loaded: a run that fails its
            # checks leaves the folder's record as it was
            atomic_write_text(os.path.join(cfg.OUTPUT_DIR, CONFIG_FILE), cfg.dump())
            if args.eval_only:
                return trainer.test()
            if not args.no_train:
                trainer.train()
            return None
        finally:
            close_log()
    finally:
        lock.close()


def cli(argv=None):
    """`main` for the command line: a user error prints its message and exits 1, no traceback."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        main(argv)
    except Exception as err:
        from engine.errors import UserError

        if debug or not isinstance(err, UserError):
            raise
        print(f"train.py: error: {err}", file=sys.stderr)
        print(f"(run with --debug or {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
