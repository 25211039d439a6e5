"""The few-shot, cross-dataset and domain-generalisation tables of `parse_results.py --protocol ...`.

Layouts read (ours and the official scripts'); each run's number comes from its `results.json`, or
else from its `log.txt` as the official parser reads it:

    few-shot   <root>/few_shot/<dataset>/<METHOD>/<CFG>_<K>shots[/<variant>]/seed<S>   (ours; PromptSRC's reproduce)
               <root>/<dataset>/<METHOD>/<CFG>_<K>shots[/<variant>]/seed<S>    (CoOp's main.sh, variant
                                                                              `nctx16_cscFalse_ctpend`; PromptSRC)
    xd and dg  <root>/imagenet/<METHOD>/<CFG>_<K>shots[/<variant>]/seed<S>            the source: its final test
               <root>/evaluation/<METHOD>/<CFG>_<K>shots[/<variant>]/<target>/seed<S>  each target (`=> result`)
    zero-shot  <root>/ZeroshotCLIP/<CFG>/<dataset>                                     (CoOp's zeroshot.sh)

An `imagenet/...` folder is a cross-dataset source when it has evaluations, or when its method has no
run on another dataset in that layout; otherwise it is a few-shot run (CoOp's main.sh writes both).
A few-shot table gathers a method's runs of every K, whatever each K's config (CoOp uses three); if
two configs cover the same dataset and K, each config gets its own table.

Per cell: mean ± population std over seeds; `†` marks a cell with fewer seeds than expected (`--seeds`,
else every seed seen in that table). Averages: few-shot over the table's datasets (the 11 in a full
grid), per K; cross-dataset over the targets only (10 in a full grid); domain generalisation over the
4 ImageNet variants only; ImageNet, the source, is never averaged in. An average with a missing cell
is left blank, never taken over fewer columns. Zero-shot CLIP is one row in each table (few-shot:
the `0` column). DPC rows state their `TRAINER.DPC.ALL_CLASSES_PROMPT` (runs of the official code:
`reference`).
"""
import glob
import json
import os
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field

from tabulate import tabulate

import parse_results as base
from scripts.protocol_paper_numbers import paper_table
from scripts.methods import PAPER_DATASETS, DG_TARGETS, VARIANTS, XD_SOURCE, XD_TARGETS, label

SHOTS_FOLDER = re.compile(r"^(.+)_(\d+)shots$")
SEED_FOLDER = re.compile(r"^seed(\d+)$")
NOT_DATASETS = {"base2new", "evaluation", "few_shot", "ZeroshotCLIP", "launch_logs", "slurm"}
NAMES = {stem: name for stem, (name, _, _) in {**PAPER_DATASETS, **VARIANTS}.items()}
ORDER = [*PAPER_DATASETS, *VARIANTS]
PROTOCOL_NAMES = {"base2new": "Base-to-new", "fewshot": "Few-shot", "xd": "Cross-dataset transfer",
                  "dg": "Domain generalisation"}
TITLES = {"fewshot": "Few-shot learning, all classes (Average over the datasets)",
          "xd": "Cross-dataset transfer from ImageNet (Average over the targets, ImageNet excluded)",
          "dg": "Domain generalisation from ImageNet (Average over the ImageNet variants, ImageNet excluded)"}
ZERO_SHOT = "ZeroshotCLIP"


def display_name(dataset):
    return NAMES.get(dataset, dataset)


def dataset_order(dataset):
    return (ORDER.index(dataset), dataset) if dataset in ORDER else (len(ORDER), dataset)


# ----------------------------------------------------------------------------------------------
# Reading the runs
# ----------------------------------------------------------------------------------------------
@dataclass
class Group:
    """One row (xd, dg) or one table (few-shot) of results: a method, config and variant."""
    method: str
    config: str      # the config folder name (few-shot: `configs` holds each K's)
    variant: str     # a sub-folder below the config folder (CoOp's `nctx16_cscFalse_ctpend`, our TAG)
    shots: int = 0   # xd and dg: the source's shots
    cells: dict = field(default_factory=lambda: defaultdict(dict))  # (dataset, K) -> {seed: value}
    totals: dict = field(default_factory=dict)                      # dataset -> test images
    configs: dict = field(default_factory=lambda: defaultdict(set))  # few-shot: K -> config names
    run_dirs: list = field(default_factory=list)

    def add(self, dataset, k, seed, run_dir, signals, args):
        self.run_dirs.append(run_dir)
        value, source = base.read_run(run_dir, signals, newest_log=args.newest_log, from_logs=args.from_logs)
        if value is not None:
            self.cells[(dataset, k)][seed] = value
            total = read_total(source, signals)
            if total is not None:
                self.totals[dataset] = total

    @property
    def name(self):
        """The method's table label, with DPC's all-classes prompt setting."""
        text = label(self.method)
        if self.method.startswith("DPC_") or self.method.startswith("StackSPLE_"):
            settings = {base.config_value(d, "TRAINER.DPC.ALL_CLASSES_PROMPT") or "reference" for d in self.run_dirs}
            text += f" [all-classes prompt: {'/'.join(sorted(settings))}]"
        return text

    @property
    def folder(self):
        shots = f"_{self.shots}shots" if self.shots else ""
        return f"{self.config}{shots}" + (f"/{self.variant}" if self.variant else "")

    def seeds(self):
        return sorted({s for per_seed in self.cells.values() for s in per_seed})


TOTAL_LINE = re.compile(r"^\* total: ([\d,]+)$")


def read_total(source, signals):
    """The number of test images behind a result: `total` in results.json, or the log's last `* total:`
    line after the end signal (None if there is none)."""
    if source.endswith(".json"):
        with open(source) as f:
            return json.load(f).get("total")
    started, total = False, None
    with open(source, errors="replace") as f:
        for line in map(str.strip, f):
            started = started or line in signals
            match = TOTAL_LINE.match(line)
            if started and match:
                total = int(match.group(1).replace(",", ""))
    return total


def seed_dirs(root, *parts):
    """(run dir, path parts below root, seed) of every `seed<S>` folder matching root/parts."""
    for run_dir in sorted(glob.glob(os.path.join(glob.escape(root), *parts))):
        match = SEED_FOLDER.match(os.path.basename(run_dir))
        if match and os.path.isdir(run_dir):
            yield run_dir, os.path.relpath(run_dir, root).split(os.sep), int(match.group(1))


def scan(root, args):
    """{"fewshot": [Group], "xd": [Group], "zero_shot": Group or None} of the runs under `root`."""
    xd = {}
    for has_variant in (False, True):
        for run_dir, parts, seed in seed_dirs(root, "evaluation", "*", "*", *["*"] * has_variant, "*", "seed*"):
            match = SHOTS_FOLDER.match(parts[2])
            if match:
                key = (parts[1], match.group(1), parts[3] if has_variant else "", int(match.group(2)))
                xd.setdefault(key, Group(*key)).add(parts[-2], 0, seed, run_dir, base.TEST_SIGNALS, args)

    official = defaultdict(list)  # (method, variant) -> [(dataset, config, K, seed, run_dir)] in CoOp's layout
    ours = []
    for has_variant in (False, True):
        stars = ["*"] * (3 + has_variant)
        for run_dir, parts, seed in seed_dirs(root, "few_shot", *stars, "seed*"):
            ours.append((parts[1], parts[2], parts[4] if has_variant else "", parts[3], seed, run_dir))
        for run_dir, parts, seed in seed_dirs(root, *stars, "seed*"):
            if parts[0] not in NOT_DATASETS and SHOTS_FOLDER.match(parts[2]):
                official[(parts[1], parts[3] if has_variant else "")].append((parts[0], parts[2], seed, run_dir))
    fewshot_runs = [(dataset, method, variant, folder, seed, run_dir) for dataset, method, variant, folder, seed, run_dir
                    in ours if SHOTS_FOLDER.match(folder)]
    for (method, variant), runs in official.items():
        has_others = any(dataset != XD_SOURCE for dataset, *_ in runs)
        for dataset, folder, seed, run_dir in runs:
            config, shots = SHOTS_FOLDER.match(folder).groups()
            key = (method, config, variant, int(shots))
            if dataset == XD_SOURCE and (key in xd or not has_others):
                xd.setdefault(key, Group(*key))  # a cross-dataset source (its number: below)
            else:
                fewshot_runs.append((dataset, method, variant, folder, seed, run_dir))
    for (method, config, variant, shots), group in xd.items():
        source = os.path.join(XD_SOURCE, method, f"{config}_{shots}shots", *[variant] * bool(variant), "seed*")
        for run_dir, _, seed in seed_dirs(root, source):
            group.add(XD_SOURCE, 0, seed, run_dir, base.TRAIN_SIGNALS, args)

    zero_shot = None
    for folder in sorted(glob.glob(os.path.join(glob.escape(root), ZERO_SHOT, "*", "*"))):
        if os.path.isfile(os.path.join(folder, "results.json")) or os.path.isfile(os.path.join(folder, "log.txt")):
            config, dataset = folder.split(os.sep)[-2:]
            if zero_shot is not None and zero_shot.config != config:
                print(f"Warning: several zero-shot CLIP configs under {root}; showing {zero_shot.config}",
                      file=sys.stderr)
                continue
            zero_shot = zero_shot or Group(ZERO_SHOT, config, "")
            zero_shot.add(dataset, 0, 0, folder, base.TEST_SIGNALS, args)
    return {"fewshot": fewshot_groups(fewshot_runs, args), "xd": [xd[k] for k in sorted(xd)], "zero_shot": zero_shot}


def fewshot_groups(runs, args):
    """One group per method and variant across K; per config where two configs share a dataset and K."""
    by_method = defaultdict(list)
    for dataset, method, variant, folder, seed, run_dir in runs:
        config, shots = SHOTS_FOLDER.match(folder).groups()
        by_method[(method, variant)].append((dataset, config, int(shots), seed, run_dir))
    groups = []
    for (method, variant), items in sorted(by_method.items()):
        configs_at = defaultdict(set)
        for dataset, config, k, _, _ in items:
            configs_at[(dataset, k)].add(config)
        split = any(len(c) > 1 for c in configs_at.values())
        own = {}
        for dataset, config, k, seed, run_dir in items:
            group = own.setdefault(config if split else "", Group(method, config if split else "", variant))
            group.configs[k].add(config)
            group.add(dataset, k, seed, run_dir, base.TRAIN_SIGNALS, args)
        groups += [own[c] for c in sorted(own)]
    return groups


def detect(root, args):
    """The protocols with runs under `root`, in table order. Zero-shot CLIP's runs serve every protocol,
    so they alone make a cross-dataset table only where nothing else was run."""
    found = scan(root, args)
    zero_shot = {d for d, _ in found["zero_shot"].cells} if found["zero_shot"] else set()
    learned = [{d for d, _ in g.cells} for g in found["xd"]]
    protocols = ["fewshot"] * bool(found["fewshot"])
    if any(d & set(XD_TARGETS) or not d - {XD_SOURCE} for d in learned) or \
            not found["fewshot"] and not learned and zero_shot & set(XD_TARGETS):
        protocols.append("xd")
    if set().union(zero_shot, *learned) & set(DG_TARGETS):
        protocols.append("dg")
    return protocols


# ----------------------------------------------------------------------------------------------
# Summaries
# ----------------------------------------------------------------------------------------------
def mean(values):
    return sum(values) / len(values)


@dataclass
class Cell:
    values: list            # per seed
    short: bool = False     # fewer seeds than expected

    @property
    def mean(self):
        return mean(self.values) if self.values else None


def cell(group, dataset, k, expected):
    per_seed = group.cells.get((dataset, k), {})
    values = [per_seed[s] for s in sorted(per_seed)]
    return Cell(values, bool(values) and bool(set(expected) - set(per_seed)))


def expected_seeds(group, args):
    if group.method == ZERO_SHOT:
        return [0]
    return [int(s) for s in args.seeds.split(",") if s] or group.seeds()


def average(cells):
    """Mean of the cell means, or None when a cell is missing (never over fewer columns)."""
    means = [c.mean for c in cells]
    return None if not means or None in means else mean(means)


def paper_average(results, columns, full):
    """The published average over `columns`: the published one when they are the `full` set, else the
    mean of the published cells (None where one is missing)."""
    if set(columns) == set(full):
        return results.get("average")
    values = [results.get(c) for c in columns]
    return None if not values or None in values else mean(values)


def fmt(c, style):
    if c.mean is None:
        return "–"
    mark = r"$^\dagger$" if style.tablefmt == "latex_raw" else "†"
    return base.fmt_cell(c.values, c.mean, style) + mark * c.short


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------
def fewshot_tables(found, datasets, args, style):
    """One table per method (datasets x K), then the averages of every method side by side."""
    groups = found["fewshot"]
    zero_shot = found["zero_shot"]
    overview, csv_rows = [], []
    all_shots = sorted({k for g in groups for _, k in g.cells} | {k for g in groups for k in g.configs})
    for group in ([zero_shot] if zero_shot else []) + groups:
        is_zero_shot = group is zero_shot
        shots = [0] if is_zero_shot else sorted({k for _, k in group.cells} | set(group.configs))
        seeds = expected_seeds(group, args)
        rows, short = [], []
        for dataset in datasets:
            cells = [cell(group, dataset, k, seeds) for k in shots]
            short += [f"{display_name(dataset)} K={k}" for k, c in zip(shots, cells) if c.short]
            rows.append((dataset, cells))
        averages = [average([cells[i] for _, cells in rows]) for i in range(len(shots))]
        results, source = paper_table("fewshot", group.method) if args.compare_paper else ({}, "")
        paper_avg = [paper_average({d: results.get(d, {}).get(k) for d in ("average", *datasets)}, datasets,
                                   PAPER_DATASETS) for k in shots]
        for dataset, cells in rows:
            for k, c in zip(shots, cells):
                csv_rows.append(("fewshot", group, dataset, k, c, results.get(dataset, {}).get(k), source))
        for k, avg, pap in zip(shots, averages, paper_avg):
            csv_rows.append(("fewshot", group, "average", k, Cell([avg] if avg is not None else []), pap, source))
        overview.append((group, {k: a for k, a in zip(shots, averages)}))
        if args.format == "csv":
            continue
        headers = ["Dataset"] + ["zero-shot" if k == 0 else f"{k} shot{'s' * (k > 1)}" for k in shots]
        table = [[style.escape(display_name(d))] + [fmt(c, style) for c in cells] for d, cells in rows]
        table.append([style.bold(style.escape(f"Average ({len(datasets)})"))] + [bold_num(a, style) for a in averages])
        if args.compare_paper:
            table.append([style.escape("Published average")] + [base.fmt_num(p) for p in paper_avg])
            table.append([r"$\Delta$" if style.tablefmt == "latex_raw" else "Δ"]
                         + [delta(a, p) for a, p in zip(averages, paper_avg)])
        title = f"{group.name} ({'config ' + group.config if is_zero_shot else configs_text(group, shots)})"
        print_table(title, headers, table, style)
        notes = []
        blank = [f"K={k}" for k, a in zip(shots, averages) if a is None]
        if blank:
            notes.append(f"Average left blank for {', '.join(blank)}: a dataset has no result")
        if short:
            notes.append(f"† fewer seeds than {','.join(map(str, seeds))}: {', '.join(short)}")
        if args.compare_paper:
            notes.append(f"Published: {source}" if source else "Published: no numbers for this method")
        print_notes(notes, style)
    if args.format != "csv" and len(overview) > 1:
        columns = ([0] if zero_shot else []) + [k for k in all_shots if k]
        headers = ["Method", "Config"] + ["zero-shot" if k == 0 else f"{k} shot{'s' * (k > 1)}" for k in columns]
        table = [[style.escape(g.name), style.escape(g.config if g is zero_shot else configs_text(g, columns))]
                 + [base.fmt_num(avgs.get(k)) for k in columns] for g, avgs in overview]
        print_table(f"Few-shot averages over {len(datasets)} dataset{'s' * (len(datasets) > 1)}", headers, table,
                    style)
    return csv_rows


def configs_text(group, shots):
    """`config X` when every K used X, else `1 shot: A; 2, 4 shots: B; ...`."""
    by_config = defaultdict(list)
    for k in shots:
        if k in group.configs:
            by_config[" / ".join(sorted(group.configs[k]))].append(k)
    if len(by_config) == 1:
        text = f"config {next(iter(by_config))}"
    else:
        text = "; ".join(f"{', '.join(map(str, ks))} shot{'s' * (len(ks) > 1 or ks[0] > 1)}: {c}"
                         for c, ks in by_config.items())
    return text + (f", {group.variant}" if group.variant else "")


def transfer_table(protocol, found, targets, args, style):
    """Cross-dataset (xd) or domain generalisation (dg): one row per method, ImageNet then the targets."""
    groups = ([found["zero_shot"]] if found["zero_shot"] else []) + found["xd"]
    columns = [XD_SOURCE, *targets]
    headers = ["Method", "Config", *(display_name(c) for c in columns), f"Average ({len(targets)})"]
    headers += ["ΔAvg" if style.tablefmt != "latex_raw" else r"$\Delta$Avg"] * args.compare_paper
    table, csv_rows, notes, sources = [], [], [], {}
    for group in groups:
        seeds = expected_seeds(group, args)
        cells = [cell(group, d, 0, seeds) for d in columns]
        avg = average(cells[1:])
        results, source = paper_table(protocol, group.method) if args.compare_paper else ({}, "")
        paper_avg = paper_average(results, targets, XD_TARGETS if protocol == "xd" else DG_TARGETS)
        for d, c in zip(columns, cells):
            csv_rows.append((protocol, group, d, group.shots, c, results.get(d), source))
        csv_rows.append((protocol, group, "average", group.shots, Cell([avg] if avg is not None else []),
                         paper_avg, source))
        short = [display_name(d) for d, c in zip(columns, cells) if c.short]
        if short:
            notes.append(f"† {group.name}: fewer seeds than {','.join(map(str, seeds))} on {', '.join(short)}")
        missing = [display_name(d) for d, c in zip(columns[1:], cells[1:]) if c.mean is None]
        if missing and len(missing) < len(targets):
            notes.append(f"{group.name}: no result on {', '.join(missing)}, so no average")
        config = group.config if group.method == ZERO_SHOT else group.folder
        row = [style.escape(group.name), style.escape(config), *(fmt(c, style) for c in cells), bold_num(avg, style)]
        table.append(row + [delta(avg, paper_avg)] * args.compare_paper)
        if results:
            sources[group.method] = source
            table.append([r"$\hookrightarrow$ published" if style.tablefmt == "latex_raw" else "↳ published", "", *(base.fmt_num(results.get(d)) for d in columns),
                          base.fmt_num(paper_avg), ""])
    if args.format == "csv":
        return csv_rows
    totals = {}
    for group in groups:
        for d, n in group.totals.items():
            totals.setdefault(d, set()).add(n)
    table.append([style.escape("test images"), "", *("/".join(f"{n:,}" for n in sorted(totals.get(d, ()))) or "–"
                                                     for d in columns), ""] + [""] * args.compare_paper)
    print_table(TITLES[protocol], headers, table, style)
    notes += [f"Published {label(m)}: {s}" for m, s in sources.items()]
    print_notes(notes, style)
    return csv_rows


def bold_num(x, style):
    return "–" if x is None else style.bold(base.fmt_num(x))


def delta(ours, paper):
    return "–" if ours is None or paper is None else f"{round(ours - paper, 2) + 0.0:+.2f}"


def print_table(title, headers, table, style):
    print(f"### {title}\n" if style.tablefmt == "github" else f"% {title}")
    print(tabulate(table, headers=[style.escape(h) if "$" not in h else h for h in headers],
                   tablefmt=style.tablefmt, disable_numparse=True))
    print()


def print_notes(notes, style):
    for note in notes:
        print(note if style.tablefmt == "github" else f"% {note}")
    if notes:
        print()


def write_csv(rows):
    import csv

    writer = csv.writer(sys.stdout)
    writer.writerow(["protocol", "method", "label", "config", "variant", "dataset", "shots", "accuracy", "std",
                     "seeds", "fewer_seeds", "test_images", "paper", "paper_source"])
    r2 = lambda x: "" if x is None else round(x, 2)  # noqa: E731
    for protocol, group, dataset, k, c, paper, source in rows:
        std = round(base.population_std(c.values), 2) if len(c.values) > 1 and dataset != "average" else ""
        config = " / ".join(sorted(group.configs.get(k, ()))) or group.config
        writer.writerow([protocol, group.method, group.name, config, group.variant, dataset, k, r2(c.mean), std,
                         len(c.values) if dataset != "average" else "", int(c.short) if dataset != "average" else "",
                         group.totals.get(dataset, ""), r2(paper), source if paper is not None else ""])


# ----------------------------------------------------------------------------------------------
# Plots (optional: matplotlib)
# ----------------------------------------------------------------------------------------------
def plot(protocol, found, columns, out_dir):
    plt = base.pyplot()
    if plt is None:
        return
    os.makedirs(out_dir, exist_ok=True)
    zero_shot = found["zero_shot"]
    if protocol == "fewshot":  # CoOp's figure: accuracy vs shots per dataset, and the average
        panels = [*columns, "average"]
        ncols = min(4, len(panels))
        nrows = -(-len(panels) // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.0 * nrows), squeeze=False)
        for ax, panel in zip(axes.flat, panels):
            datasets = columns if panel == "average" else [panel]
            for group in found["fewshot"]:
                shots = sorted({k for _, k in group.cells})
                ys = [average([cell(group, d, k, []) for d in datasets]) for k in shots]
                points = [(k, y) for k, y in zip(shots, ys) if y is not None]
                if points:
                    ax.plot(*zip(*points), marker="o", label=group.name)
            if zero_shot:
                y = average([cell(zero_shot, d, 0, []) for d in datasets])
                if y is not None:
                    ax.plot([0], [y], marker="*", markersize=12, linestyle="", label=zero_shot.name)
            ax.set_xscale("symlog", base=2, linthresh=1)
            ax.set_xticks([0, 1, 2, 4, 8, 16], ["0", "1", "2", "4", "8", "16"])
            ax.set_title("Average" if panel == "average" else display_name(panel), fontsize="medium")
            ax.set_xlabel("shots per class")
            ax.set_ylabel("accuracy (%)")
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        handles, names = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="lower center", ncol=min(4, max(len(names), 1)), fontsize="small")
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        path = os.path.join(out_dir, "fewshot_curves.png")
    else:  # grouped bars: one bar per method for each dataset and the average
        groups = ([zero_shot] if zero_shot else []) + found["xd"]
        panels = [XD_SOURCE, *columns, "average"]
        fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(panels) * max(len(groups), 1)), 4.0))
        width = 0.8 / max(len(groups), 1)
        for i, group in enumerate(groups):
            values = [average([cell(group, d, 0, []) for d in columns]) if d == "average"
                      else cell(group, d, 0, []).mean for d in panels]
            ax.bar([j + (i - (len(groups) - 1) / 2) * width for j in range(len(panels))],
                   [v if v is not None else 0 for v in values], width=width, label=group.name)
        ax.set_xticks(range(len(panels)), ["Average" if d == "average" else display_name(d) for d in panels],
                      rotation=30, ha="right")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 110)
        ax.set_title(f"{PROTOCOL_NAMES[protocol]} from ImageNet (Average: targets only)", fontsize="medium")
        ax.legend(fontsize="small", ncol=2)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{protocol}_bars.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"Wrote {path}")


# ----------------------------------------------------------------------------------------------
# Entry point (from parse_results.main)
# ----------------------------------------------------------------------------------------------
def main(args, protocol, root):
    """Print the `protocol` table(s) of the runs under `root`; returns False when there is nothing to show."""
    found = scan(root, args)
    methods = [m for m in args.methods.split(",") if m]
    if methods:
        found["fewshot"] = [g for g in found["fewshot"] if g.method in methods]
        found["xd"] = [g for g in found["xd"] if g.method in methods]
        if ZERO_SHOT not in methods:
            found["zero_shot"] = None
    chosen = [d for d in args.datasets.split(",") if d]
    style = base.STYLES.get(args.format, base.STYLES["md"])  # csv: the cells are computed all the same
    zero_shot = {d for d, _ in found["zero_shot"].cells} if found["zero_shot"] else set()
    if protocol == "fewshot":
        learned = {d for g in found["fewshot"] for d, _ in g.cells}
        datasets = chosen or sorted(learned or zero_shot & set(PAPER_DATASETS), key=dataset_order)
        if not datasets:
            return False
        rows = fewshot_tables(found, datasets, args, style)
    else:
        known = XD_TARGETS if protocol == "xd" else DG_TARGETS
        present = zero_shot.union(*({d for d, _ in g.cells} for g in found["xd"]))
        datasets = [d for d in chosen if d in known] if chosen else [d for d in known if d in present]
        if not found["xd"] and not zero_shot & set(known):
            return False
        rows = transfer_table(protocol, found, datasets, args, style)
    if args.format == "csv":
        write_csv(rows)
    if args.plot:
        plot(protocol, found, datasets, args.plot)
    return True
