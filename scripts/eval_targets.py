"""Evaluate one model on several datasets in one process: `train.py --eval-only` once per dataset,
with the interpreter and its imports started once. scripts/xd.sh evaluates a cross-dataset source's
targets with it.

    python scripts/eval_targets.py DATASET=RUN_DIR [DATASET=RUN_DIR ...] -- TRAIN_ARGS ...

TRAIN_ARGS are the train.py arguments every target shares (`--eval-only`, `--model-dir`, the config,
then any KEY VALUE options); each target adds `--dataset-config-file configs/datasets/DATASET.yaml
--output-dir RUN_DIR`. Every run directory gets its own log.txt, config.yaml and results.json, as a
separate train.py call writes them (each run seeds the RNGs afresh, and evaluation draws nothing
else), and is locked while it runs with the lock the shell scripts use (a hidden `.<folder>.lock`
beside it). A finished target (results.json) is skipped; a failing one is reported and the others
still run. Exit code: the number of failed targets (0: all done).
"""
import os
import sys
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import train  # noqa: E402
from scripts.methods import dataset_config_file, run_lock  # noqa: E402


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--" not in argv or argv.index("--") == 0:
        sys.exit(__doc__)
    split = argv.index("--")
    targets, shared = argv[:split], argv[split + 1:]
    for item in targets:
        if "=" not in item:
            sys.exit(f"eval_targets.py: expected DATASET=RUN_DIR, got {item!r}")
    failed = []
    for item in targets:
        dataset, run_dir = item.split("=", 1)
        with run_lock(run_dir):
            if os.path.isfile(os.path.join(run_dir, "results.json")):
                print(f"Done already: {dataset} ({run_dir})")
                continue
            print(f"=== evaluate on {dataset}: {run_dir}", flush=True)
            try:
                train.main(["--dataset-config-file", dataset_config_file(dataset), "--output-dir", run_dir, *shared])
            except (Exception, SystemExit):  # one target's failure (bad data, bad option) spares the others
                traceback.print_exc()
                failed.append(dataset)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return min(len(failed), 100)


if __name__ == "__main__":
    sys.exit(main())
