"""`parse_results.py`'s official mode: what CoOp's `parse_test_res.py` prints for a directory of seed
folders (or, with `--multi-exp`, for each experiment folder below it, then their average).

    python parse_results.py output/base2new/train_base/caltech101/shots_16/CoOp/vit_b16_ctxv1
    python parse_results.py output/base2new/test_new/caltech101/shots_16/CoOp/vit_b16_ctxv1 --test-log
"""
import math
import os
import re
import sys

from engine.official_formats import TEST_SIGNALS, TRAIN_SIGNALS, read_run

SEED_DIR = re.compile(r"^seed(\d+)$")


def add_options(parser):
    """parse_test_res.py's own options; any of them selects this mode."""
    official = parser.add_argument_group("parse_test_res.py options")
    official.add_argument("--ci95", action="store_true", help="1.96 std / sqrt(n) instead of the std")
    official.add_argument("--test-log", action="store_true", help="end signal `=> result` (eval-only logs)")
    official.add_argument("--multi-exp", action="store_true", help="each sub-folder is an experiment")
    official.add_argument("--keyword", default="accuracy", help="metric name in `* <keyword>: X%%`")


def selected(args):
    """Official mode: an official option is given, or the directory holds seed folders."""
    official_flags = args.ci95 or args.test_log or args.multi_exp or args.keyword != "accuracy"
    return official_flags or is_seed_folder_dir(args.directory)


def is_seed_folder_dir(directory):
    return any(SEED_DIR.match(e) and os.path.isdir(os.path.join(directory, e)) for e in os.listdir(directory))


def population_std(values):
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def ci95(values):
    return 1.96 * population_std(values) / math.sqrt(len(values))


def parse_directory(directory, args, signals):
    """Summarise the seed folders of one experiment; returns the mean."""
    print(f"Parsing files in {directory}")
    values = []
    for entry in sorted(os.listdir(directory)):
        run_dir = os.path.join(directory, entry)
        if entry.startswith(".") or not os.path.isdir(run_dir):
            continue
        value, source = read_run(run_dir, signals, args.keyword, args.newest_log, args.from_logs)
        if value is None:
            continue
        print(f"file: {source}. {args.keyword}: {value:.2f}%. ")
        values.append(value)
    if not values:
        sys.exit(f"Nothing found in {directory}")
    mean = sum(values) / len(values)
    spread = ci95(values) if args.ci95 else population_std(values)
    print("===")
    print(f"Summary of directory: {directory}")
    print(f"* {args.keyword}: {mean:.2f}% +- {spread:.2f}%")
    print("===")
    return mean


def main(args):
    signals = TEST_SIGNALS if args.test_log else TRAIN_SIGNALS
    if not args.multi_exp:
        parse_directory(args.directory, args, signals)
        return
    means = [parse_directory(os.path.join(args.directory, d), args, signals)
             for d in sorted(os.listdir(args.directory))
             if not d.startswith(".") and os.path.isdir(os.path.join(args.directory, d))]
    print("Average performance")
    print(f"* {args.keyword}: {sum(means) / len(means):.2f}%")
