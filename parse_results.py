"""Collect base-to-new results into the paper table; also a drop-in `parse_test_res.py`.

Table mode scans `<root>/base2new/{train_base,test_new}/<dataset>/shots_<K>/<METHOD>/<CFG>/seed<S>`:

    python parse_results.py output/ [--format md|csv|latex] [--compare-paper] [--mean-of-h] [--plot DIR]

Per dataset, Base and New are the mean ± population std over seeds and H = HM(mean Base, mean New).
The average row is HM(average Base, average New), the papers' convention,
not the mean of the per-dataset H (`--mean-of-h` adds that as a labelled secondary column).
A run's number is read from its `results.json`, or else from `log.txt` as the official parser reads
it: the last `* accuracy: X%` after `Finish training` / `Finished training` (base) or `=> result`
(new). Rerun logs `log.txt-<timestamp>` are ignored unless `--newest-log` (as
the official parser reads only `log.txt`, the first run's log); with it, the logs are tried newest first,
`log.txt` last, and the first one holding a result is used, so a crashed rerun does not hide an older result.

A shot folder may carry a suffix, as the official KgCoOp scripts write `shots_16_<W>` (e.g. `shots_16_8.0`):
runs with different suffixes are kept apart, and the config label shows the suffix, `<CFG>_W<W>` when it is a
number (`vit_b16_ep100_ctxv1_W8.0`), else `<CFG>_<suffix>`. Other `shots_*` folders are skipped with a warning.
`--recipe NAME` (see `scripts/launch.py --recipe list`) prints a published table in its paper's layout instead:
ours beside the paper's numbers, each difference, a marker where it exceeds what seed variation explains.
LaTeX output escapes the LaTeX special characters in dataset, method and config names.

Official mode, for a directory of seed folders (or with --test-log, --ci95, --multi-exp, --keyword),
prints what CoOp's `parse_test_res.py` prints (`scripts/official_results.py`):

    python parse_results.py output/base2new/train_base/caltech101/shots_16/CoOp/vit_b16_ctxv1
    python parse_results.py output/base2new/test_new/caltech101/shots_16/CoOp/vit_b16_ctxv1 --test-log
"""
import argparse
import glob
import json
import os
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field

import yaml
from tabulate import tabulate

from scripts import official_results
from scripts.methods import PAPER_DATASETS, label
from engine.official_formats import TEST_SIGNALS, TRAIN_SIGNALS, read_run
from scripts.official_results import SEED_DIR, population_std
from scripts.paper_numbers import paper_result

SHOTS_DIR = re.compile(r"^shots_(\d+)(?:_(.+))?$")  # shots_16, or KgCoOp's shots_16_<W>
TEST_SELECTION_MARK = "‡"  # a cell whose runs chose their epoch on test data
DEFAULT_SWEEP_KEYS = ("TRAINER.DPC.WEIGHT_BASE", "TRAINER.DPC.WEIGHT_NEW")


# ----------------------------------------------------------------------------------------------
# Reading one run
# ----------------------------------------------------------------------------------------------
def selected_on_test(run_dir):
    """Whether the run's checkpoint was chosen by accuracy on test data (its results.json says so: PromptKD's
    official `best_val`, whose val split is the base half of the test set)."""
    try:
        with open(os.path.join(run_dir, "results.json")) as f:
            return bool(json.load(f).get("selected_on_test"))
    except (OSError, ValueError):
        return False


# ----------------------------------------------------------------------------------------------
# The grid: method/config -> dataset -> seed -> base/new
# ----------------------------------------------------------------------------------------------
@dataclass
class Group:
    """All runs of one method and config folder at one shot count (and shot-folder suffix, e.g. KgCoOp's W)."""
    method: str
    folder: str
    shots: int
    suffix: str = ""  # the `<W>` of `shots_16_<W>`; "" for plain `shots_16`
    runs: dict = field(default_factory=lambda: defaultdict(lambda: defaultdict(dict)))  # dataset -> seed -> phase
    run_dirs: list = field(default_factory=list)
    selected_on_test: set = field(default_factory=set)  # (dataset, phase) with a run whose epoch was chosen on test

    @property
    def config(self):
        """The config folder, with the shot-folder suffix if any: `vit_b16_ep100_ctxv1_W8.0`."""
        return config_label(self.folder, self.suffix)

    @property
    def title(self):
        return f"{label(self.method)} ({self.config}, {self.shots} shots)"


def config_label(folder, suffix):
    if not suffix:
        return folder
    try:
        float(suffix)
    except ValueError:
        return f"{folder}_{suffix}"
    return f"{folder}_W{suffix}"  # the official KgCoOp scripts put W there (docs/methods/kgcoop.md)


def base2new_root(root):
    for candidate in (root, os.path.join(root, "base2new")):
        if any(os.path.isdir(os.path.join(candidate, p)) for p in ("train_base", "test_new")):
            return candidate
    return None


def scan(root, newest_log=False, from_logs=False):
    """Read every run under `root`; returns {(method, folder, shots, shot-folder suffix): Group}."""
    groups, skipped = {}, set()
    for phase, signals in (("train_base", TRAIN_SIGNALS), ("test_new", TEST_SIGNALS)):
        for run_dir in sorted(glob.glob(os.path.join(glob.escape(root), phase, "*", "shots_*", "*", "*", "seed*"))):
            rest, seed = os.path.split(run_dir)
            rest, folder = os.path.split(rest)
            rest, method = os.path.split(rest)
            rest, shots = os.path.split(rest)
            dataset = os.path.basename(rest)
            if not SEED_DIR.match(seed) or not os.path.isdir(run_dir):
                continue
            shots_match = SHOTS_DIR.match(shots)
            if shots_match is None:
                shots_dir = os.path.join(rest, shots)
                if shots_dir not in skipped:
                    skipped.add(shots_dir)
                    print(f"Warning: skipping {shots_dir} (not shots_<K> or shots_<K>_<suffix>)", file=sys.stderr)
                continue
            key = (method, folder, int(shots_match.group(1)), shots_match.group(2) or "")
            group = groups.setdefault(key, Group(*key))
            group.run_dirs.append(run_dir)
            per_phase = group.runs[dataset][int(SEED_DIR.match(seed).group(1))]  # listed even if unfinished
            value, _ = read_run(run_dir, signals, newest_log=newest_log, from_logs=from_logs)
            if value is not None:
                per_phase[phase] = value
                if selected_on_test(run_dir):
                    group.selected_on_test.add((dataset, phase))
    return groups


def harmonic_mean(base, new):
    return 2 * base * new / (base + new) if base + new > 0 else 0.0


@dataclass
class Row:
    """One dataset (or the average) of one group."""
    dataset: str
    base: list   # per-seed values
    new: list
    missing: str = ""
    base_mean: float = None
    new_mean: float = None
    hm: float = None
    mean_of_h: float = None  # average row only: the mean of per-dataset H (not the paper convention)
    paper: tuple = None
    paper_source: str = ""


def dataset_order(name):
    names = list(PAPER_DATASETS)
    return (names.index(name), name) if name in names else (len(names), name)


def summarise(group, seeds, datasets, compare_paper):
    """Per-dataset rows and the average row of one group."""
    rows = []
    for dataset in datasets:
        per_seed = group.runs.get(dataset, {})
        base_seeds = sorted(s for s in per_seed if "train_base" in per_seed[s])
        new_seeds = sorted(s for s in per_seed if "test_new" in per_seed[s])
        row = Row(dataset, [per_seed[s]["train_base"] for s in base_seeds],
                  [per_seed[s]["test_new"] for s in new_seeds])
        gaps = [f"{phase} {','.join(map(str, sorted(set(seeds) - set(have))))}"
                for phase, have in (("base", base_seeds), ("new", new_seeds)) if set(seeds) - set(have)]
        row.missing = f"missing seeds: {'; '.join(gaps)}" if gaps else ""
        row.base_mean = sum(row.base) / len(row.base) if row.base else None
        row.new_mean = sum(row.new) / len(row.new) if row.new else None
        if row.base and row.new:
            row.hm = harmonic_mean(row.base_mean, row.new_mean)
        if compare_paper:
            row.paper, row.paper_source = paper_result(group.method, dataset)
        rows.append(row)

    complete = [r for r in rows if r.hm is not None]
    average = Row("average", [], [])
    if complete:
        average.base_mean = sum(r.base_mean for r in complete) / len(complete)
        average.new_mean = sum(r.new_mean for r in complete) / len(complete)
        average.hm = harmonic_mean(average.base_mean, average.new_mean)
        average.mean_of_h = sum(r.hm for r in complete) / len(complete)
    left_out = [r.dataset for r in rows if r.hm is None]
    if left_out:
        average.missing = f"without {', '.join(left_out)}"
    if compare_paper:
        average.paper, average.paper_source = paper_average(group.method, [r.dataset for r in complete])
    return rows, average, len(complete)


def paper_average(method, datasets):
    """The paper's average over the same datasets, by the same convention (the published row if all 11)."""
    if sorted(datasets) == sorted(PAPER_DATASETS):
        return paper_result(method, "average")
    triples = [paper_result(method, d)[0] for d in datasets]
    if not triples or any(t is None or t[0] is None for t in triples):
        return None, ""
    base = sum(t[0] for t in triples) / len(triples)
    new = sum(t[1] for t in triples) / len(triples)
    return (base, new, harmonic_mean(base, new)), paper_result(method, datasets[0])[1]


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------
@dataclass
class Style:
    tablefmt: str
    pm: str
    escape: callable
    bold: callable


LATEX_SPECIALS = {"\\": r"\textbackslash{}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  **{c: "\\" + c for c in "_%&#${}"}}


def latex_escape(text):
    """Escape LaTeX's special characters in one pass (so each is escaped exactly once); `latex_raw`
    (needed for the $\\pm$ and \\textbf markup) leaves cell text as it is."""
    return re.sub(r"[\\~^_%&#${}]", lambda m: LATEX_SPECIALS[m.group(0)], str(text))


STYLES = {
    "md": Style("github", " ± ", lambda s: s, lambda s: f"**{s}**"),
    "latex": Style("latex_raw", r" $\pm$ ", latex_escape, lambda s: rf"\textbf{{{s}}}"),
}


def fmt_cell(values, mean, style):
    if mean is None:
        return "–"
    if len(values) > 1:
        return f"{mean:.2f}{style.pm}{population_std(values):.2f}"
    return f"{mean:.2f}"


def fmt_num(x):
    return "–" if x is None else f"{x:.2f}"


def display_name(dataset):
    return PAPER_DATASETS[dataset][0] if dataset in PAPER_DATASETS else dataset


def render_group(group, rows, average, n_complete, args, style):
    headers = ["Dataset", "Base", "New", "H", "Seeds"]
    if args.mean_of_h:
        headers.append("mean of dataset H")
    if args.compare_paper:
        headers += ["Paper B / N / H", r"$\Delta$H" if style.tablefmt == "latex_raw" else "ΔH"]
    table = []
    for row in rows + [average]:
        is_average = row is average
        name = style.escape(f"Average ({n_complete})" if is_average else display_name(row.dataset))
        seeds = row.missing if is_average else f"{min(len(row.base), len(row.new))}"
        if row.missing and not is_average:
            seeds += f" ({row.missing})"
        seeds = style.escape(seeds)  # the average's "without <datasets>" holds names
        if is_average:
            cells = [style.bold(name), fmt_num(row.base_mean), fmt_num(row.new_mean), style.bold(fmt_num(row.hm)), seeds]
        else:
            mark = {phase: TEST_SELECTION_MARK if (row.dataset, phase) in group.selected_on_test else ""
                    for phase in ("train_base", "test_new")}
            cells = [name, fmt_cell(row.base, row.base_mean, style) + mark["train_base"],
                     fmt_cell(row.new, row.new_mean, style) + mark["test_new"], fmt_num(row.hm), seeds]
        if args.mean_of_h:
            cells.append(fmt_num(row.mean_of_h) if is_average else "")
        if args.compare_paper:
            paper = row.paper
            cells.append(" / ".join(fmt_num(x) for x in paper) if paper else "–")
            delta = row.hm - paper[2] if paper and paper[2] is not None and row.hm is not None else None
            cells.append("–" if delta is None else f"{round(delta, 2) + 0.0:+.2f}")  # no "-0.00"
        table.append(cells)
    title = group.title
    if style.tablefmt == "github":
        print(f"### {title}\n")
    else:
        print(f"% {title}")
    print(tabulate(table, headers=[style.escape(h) if "$" not in h else h for h in headers],
                   tablefmt=style.tablefmt, disable_numparse=True))
    if group.selected_on_test:
        print(f"\n{TEST_SELECTION_MARK} epoch selected by accuracy on test data (the official TEST.FINAL_MODEL best_val, "
              "whose val split is the base test set); TEST.FINAL_MODEL last_step gives the unselected number")
    if args.compare_paper:
        sources = sorted({r.paper_source for r in rows + [average] if r.paper_source})
        print(f"\nPaper: {'; '.join(sources) if sources else 'no published numbers for this method'}")
    print()


def render_overview(summaries, args, style):
    """The average rows of every group, side by side."""
    headers = ["Method", "Config", "Shots", "Base", "New", "H", "Datasets"] + (["mean of dataset H"] * args.mean_of_h)
    table = []
    for group, (rows, average, n_complete) in summaries:
        line = [style.escape(label(group.method)), style.escape(group.config), group.shots,
                fmt_num(average.base_mean), fmt_num(average.new_mean), style.bold(fmt_num(average.hm)),
                f"{n_complete}/{len(rows)}"]
        table.append(line + ([fmt_num(average.mean_of_h)] * args.mean_of_h))
    print("### Averages (H = HM of the averaged Base and New)\n" if style.tablefmt == "github" else "% Averages")
    print(tabulate(table, headers=headers, tablefmt=style.tablefmt, disable_numparse=True))
    print()


def write_csv(summaries, args):
    import csv

    writer = csv.writer(sys.stdout)
    header = ["method", "label", "config", "shots", "dataset", "base", "base_std", "base_seeds", "new", "new_std",
              "new_seeds", "H", "missing", "selected_on_test"]
    header += ["mean_of_dataset_H"] * args.mean_of_h
    header += ["paper_base", "paper_new", "paper_H", "paper_source"] * args.compare_paper
    writer.writerow(header)
    r2 = lambda x: "" if x is None else round(x, 2)  # noqa: E731
    for group, (rows, average, _) in summaries:
        for row in rows + [average]:
            std = lambda v: round(population_std(v), 2) if len(v) > 1 else ""  # noqa: E731
            line = [group.method, label(group.method), group.config, group.shots, row.dataset,
                    r2(row.base_mean), std(row.base), len(row.base) or "", r2(row.new_mean), std(row.new),
                    len(row.new) or "", r2(row.hm), row.missing,
                    ",".join(name for phase, name in (("train_base", "base"), ("test_new", "new"))
                             if (row.dataset, phase) in group.selected_on_test)]
            line += [r2(row.mean_of_h) if row is average else ""] * args.mean_of_h
            if args.compare_paper:
                paper = row.paper or (None, None, None)
                line += [r2(x) for x in paper] + [row.paper_source]
            writer.writerow(line)


# ----------------------------------------------------------------------------------------------
# Plots (optional: matplotlib)
# ----------------------------------------------------------------------------------------------
def config_value(run_dir, key):
    """A dotted key from the `config.yaml` the trainer saved next to `log.txt`, or None."""
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        node = yaml.safe_load(f) or {}
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def pyplot():
    """matplotlib's pyplot without a display, or None (with a message) when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot: matplotlib is not installed (pip install matplotlib); no plots written", file=sys.stderr)
        return None
    return plt


def plot(summaries, out_dir, sweep_keys):
    plt = pyplot()
    if plt is None:
        return
    os.makedirs(out_dir, exist_ok=True)
    for group, (rows, average, _) in summaries:
        shown = [r for r in rows if r.hm is not None] + ([average] if average.hm is not None else [])
        if not shown:
            continue
        fig, ax = plt.subplots(figsize=(max(5.0, 1.0 + 0.9 * len(shown)), 3.8))
        x = range(len(shown))
        for offset, (name, attr) in zip((-0.27, 0, 0.27), (("Base", "base_mean"), ("New", "new_mean"), ("H", "hm"))):
            ax.bar([i + offset for i in x], [getattr(r, attr) for r in shown], width=0.27, label=name)
        ax.set_xticks(list(x), ["Average" if r is average else display_name(r.dataset) for r in shown],
                      rotation=30, ha="right")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 115)  # headroom for the legend
        ax.set_title(group.title, fontsize="medium")
        ax.legend(ncol=3, fontsize="small", loc="upper center")
        fig.tight_layout()
        path = os.path.join(out_dir, f"bars_{group.method}_{group.config}_shots{group.shots}.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        print(f"Wrote {path}")

    by_method = defaultdict(list)
    for group, summary in summaries:
        by_method[(group.method, group.shots)].append((group, summary))
    for (method, shots), members in by_method.items():
        for key in sweep_keys:
            points = {}
            for group, (rows, average, n_complete) in members:
                values = {config_value(d, key) for d in group.run_dirs} - {None}
                if len(values) == 1 and average.hm is not None:
                    points.setdefault(values.pop(), []).append((average, n_complete, group.config))
            if len(points) < 2:
                continue
            if any(len(p) > 1 for p in points.values()):
                print(f"--plot: several configs of {method} share a {key} value; "
                      f"curve skipped ({points})", file=sys.stderr)
                continue
            xs = sorted(points)
            fig, ax = plt.subplots(figsize=(4.5, 3.5))
            for name, attr in (("Base", "base_mean"), ("New", "new_mean"), ("H", "hm")):
                ax.plot(xs, [getattr(points[v][0][0], attr) for v in xs], marker="o", label=name)
            ax.set_xlabel(key)
            ax.set_ylabel("average accuracy (%)")
            ax.set_title(f"{label(method)}: sweep over {key.rsplit('.', 1)[-1]}")
            ax.legend(fontsize="small")
            fig.tight_layout()
            path = os.path.join(out_dir, f"sweep_{method}_{key.rsplit('.', 1)[-1]}_shots{shots}.png")
            fig.savefig(path, dpi=120)
            plt.close(fig)
            print(f"Wrote {path}")


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", nargs="?", default="output",
                        help="output root (table), or a folder of seed folders (parse_test_res.py)")
    table = parser.add_argument_group("table mode")
    table.add_argument("--protocol", choices=("base2new", "fewshot", "xd", "dg"),
                       help="the table to print (default: every protocol found under the directory): base2new, "
                            "fewshot (datasets x shots), xd (cross-dataset) or dg (domain generalisation)")
    table.add_argument("--format", choices=("md", "csv", "latex"), default="md", help="output format")
    table.add_argument("--recipe", default="",
                       help="a published table (scripts/recipes.py; `launch.py --recipe list`) in the paper's layout, "
                            "ours beside the paper's numbers with each difference (md or latex)")
    table.add_argument("--add-method", action="append", default=[], metavar="METHOD[:CFG]",
                       help="with --recipe: add a method's runs as a row")
    table.add_argument("--methods", default="", help="comma list of methods to show (default: all found)")
    table.add_argument("--datasets", default="",
                       help="comma list of dataset stems (default: every dataset found, table order)")
    table.add_argument("--seeds", default="", help="expected seeds, e.g. 1,2,3 (default: every seed found)")
    table.add_argument("--compare-paper", action="store_true", help="add the published numbers (where known)")
    table.add_argument("--mean-of-h", action="store_true",
                       help="add the mean of per-dataset H beside the average (not the paper convention)")
    table.add_argument("--plot", metavar="DIR", help="write bar charts, config-sweep and few-shot curves (matplotlib)")
    table.add_argument("--sweep-key", action="append", default=[], metavar="KEY",
                       help=f"config key whose values form a sweep curve (default: {', '.join(DEFAULT_SWEEP_KEYS)})")
    official_results.add_options(parser)
    parser.add_argument("--newest-log", action="store_true",
                        help="read the newest log (log.txt-<timestamp>) instead of the first run's log.txt")
    parser.add_argument("--from-logs", action="store_true", help="ignore results.json; read logs only")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if not os.path.isdir(args.directory):
        sys.exit(f"No such directory: {args.directory}")
    if args.recipe:
        from scripts import recipes
        from scripts.methods import GridError
        if args.format == "csv":
            sys.exit("--recipe prints md or latex")
        try:
            print(recipes.render(recipes.get(args.recipe, args.add_method), args.directory, args.format))
        except GridError as err:
            sys.exit(f"parse_results.py: {err}")
        return
    if official_results.selected(args):
        official_results.main(args)
        return
    from scripts import protocol_tables  # the few-shot, cross-dataset and domain-generalisation tables

    root = base2new_root(args.directory)
    protocols = [args.protocol] if args.protocol else \
        ["base2new"] * (root is not None) + protocol_tables.detect(args.directory, args)
    if not protocols:
        sys.exit(f"No runs under {args.directory} (expected base2new/, few_shot/, imagenet/ + evaluation/, "
                 "ZeroshotCLIP/ or CoOp's <dataset>/<METHOD>/<CFG>_<K>shots/)")
    if args.format == "csv" and len(protocols) > 1:
        sys.exit(f"Runs of several protocols under {args.directory} ({', '.join(protocols)}): "
                 "pick one with --protocol for CSV output")
    for protocol in protocols:
        if len(protocols) > 1 and args.format != "csv":
            print(f"## {protocol_tables.PROTOCOL_NAMES[protocol]}\n" if args.format == "md" else
                  f"% {protocol_tables.PROTOCOL_NAMES[protocol]}")
        if protocol == "base2new":
            base2new_main(args, root)
        elif not protocol_tables.main(args, protocol, args.directory):
            sys.exit(f"No {protocol_tables.PROTOCOL_NAMES[protocol].lower()} runs under {args.directory}")


def base2new_main(args, root):
    if root is None:
        sys.exit(f"No base-to-new runs under {args.directory} (expected base2new/train_base or test_new)")
    groups = scan(root, args.newest_log, args.from_logs)
    methods = [m for m in args.methods.split(",") if m]
    selected = [g for key, g in sorted(groups.items()) if not methods or g.method in methods]
    if not selected:
        sys.exit(f"No runs found under {root}" + (f" for {', '.join(methods)}" if methods else ""))
    datasets = [d for d in args.datasets.split(",") if d] or \
        sorted({d for g in selected for d in g.runs}, key=dataset_order)
    summaries = []
    for group in selected:
        seeds = [int(s) for s in args.seeds.split(",") if s] or \
            sorted({s for per_seed in group.runs.values() for s in per_seed})
        summaries.append((group, summarise(group, seeds, datasets, args.compare_paper)))
    if args.format == "csv":
        write_csv(summaries, args)
    else:
        style = STYLES[args.format]
        for group, summary in summaries:
            render_group(group, *summary, args, style)
        if len(summaries) > 1:
            render_overview(summaries, args, style)
    if args.plot:
        plot(summaries, args.plot, args.sweep_key or DEFAULT_SWEEP_KEYS)


if __name__ == "__main__":
    main()
