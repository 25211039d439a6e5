"""Published tables as named recipes: which runs make up a table, what they cost, and how ours compare.

A recipe names a paper's table, its protocol, its datasets and seeds, and its rows (methods, each with
a config, or the run folder it reads) with a reference into the published-number tables
(`scripts/paper_numbers.py`, `scripts/protocol_paper_numbers.py`). Read by
`scripts/launch.py --recipe NAME` (run / price the table) and `parse_results.py --recipe NAME`
(print it beside the paper's numbers). Configs come from `scripts/methods.py`; nothing is copied here.

Comparison rule (printed with every table): a cell is marked `*` when |ours - paper| is more than
twice the population std of our seeds, or more than 1.0 point when only one seed ran.
"""
import dataclasses
import json
import math
import os
import shlex
from dataclasses import dataclass

from scripts import cost_estimates, paper_numbers, protocol_paper_numbers
from scripts.methods import (DG_TARGETS, DPC_STAGE1, FEWSHOT_SHOTS, PAPER_DATASETS, SEEDS, VARIANTS, XD_SOURCE,
                             XD_TARGETS, DPCStage1, GridError, Run, dataset_size, label, parse_method, protocol_grid,
                             resolve)

MARGIN = 1.0  # points: the marker threshold where only one seed ran
RULE = (f"* = |ours - paper| > 2 x seed std (population std over our seeds), or > {MARGIN:.1f} point where one "
        "seed ran")


@dataclass(frozen=True)
class Entry:
    """One row of a recipe's table: a method's runs and the published numbers it is compared with."""
    method: str
    cfg: str = ""           # config name or YAML path ("" = the method's config for the protocol)
    label: str = ""         # table name ("" = the method's label)
    paper: tuple = ()       # (table, key) into PAPER_TABLES, () = nothing published
    opts: tuple = ()        # KEY VALUE opts of this row's runs (base-to-new)
    tag: str = ""           # keeps a variant's runs apart (base-to-new: the config folder becomes CFG_TAG)
    shots: int = None       # base-to-new shots (None: the method's own)
    made_by: str = ""       # the runs are the stage 1 of this DPC method's runs (not launched on their own)
    unavailable: str = ""   # why this row cannot run here ("" = it can)

    @property
    def name(self):
        return self.label or label(self.method)


@dataclass(frozen=True)
class Recipe:
    name: str
    paper: str
    table: str
    protocol: str           # base2new | fewshot | xd | dg
    entries: tuple
    datasets: tuple = ()    # () = the protocol's: 11 datasets, or the xd / dg targets
    seeds: tuple = SEEDS
    shots: tuple = FEWSHOT_SHOTS  # few-shot K
    reconstruction: bool = False  # a reconstructed method's own table: no paper numbers exist
    average_only: bool = False    # the paper prints the average row only
    note: str = ""

    @property
    def columns(self):
        if self.datasets:
            return self.datasets
        return {"base2new": tuple(PAPER_DATASETS), "fewshot": tuple(PAPER_DATASETS), "xd": XD_TARGETS,
                "dg": DG_TARGETS}[self.protocol]


PAPER_TABLES = {"base2new": paper_numbers.PAPER, "dpc-reruns": paper_numbers.DPC_BACKBONE_RERUNS,
                "dpc-ablation": paper_numbers.DPC_COOP_ABLATION, **protocol_paper_numbers.PAPER}

NO_COCOOP = "not available: CoCoOp has no trainer here"


def _dpc_stage1(backbone, **kw):
    """DPC's stage-1 runs of `backbone`, as its DPC runs write them (the DPC tables' backbone columns); the
    runs' own `opts` are the backbone's paper opts already (PromptKD's KD_WEIGHT)."""
    stage1 = DPC_STAGE1.get(backbone, DPCStage1())
    return Entry(backbone, stage1.config, f"{backbone} (DPC's re-run)", ("dpc-reruns", backbone),
                 opts=stage1.config_opts, tag=stage1.tag, shots=stage1.shots, made_by=f"DPC_{backbone}", **kw)


DPC_COOP_STAGE1 = _dpc_stage1("CoOp")


def _b2n(method, **kw):
    return Entry(method, paper=("base2new", method), **kw)


RECIPES = {r.name: r for r in (
    Recipe("dpc-table1", "DPC (CVPR'25)", "main table (base-to-new; backbones are DPC's own re-runs)", "base2new", (
        DPC_COOP_STAGE1, _b2n("DPC_CoOp"),
        _dpc_stage1("MaPLe"),
        _b2n("DPC_MaPLe"),
        _dpc_stage1("PromptSRC"),
        _b2n("DPC_PromptSRC"),
        _dpc_stage1("PromptKD"),
        _b2n("DPC_PromptKD")),
        note="PromptKD and its DPC need the ViT-L/14 PromptSRC teacher in place (see README, PromptKD)."),
    Recipe("dpc-coop-ablation", "DPC (CVPR'25)", "ablation on CoOp (11-dataset averages)", "base2new", (
        DPC_COOP_STAGE1,
        Entry("DPC_CoOp", label="(1) two-step tuning", paper=("dpc-ablation", "two-step"),
              unavailable="not available: needs DPC without hard negatives (DHNO), a variant we lack"),
        Entry("DPC_CoOp", label="(2) + DHNO (presumed w_b = w_n = 1)", paper=("dpc-ablation", "two-step+DHNO"),
              opts=("TRAINER.DPC.WEIGHT_BASE", "1.0", "TRAINER.DPC.WEIGHT_NEW", "1.0"), tag="noweight"),
        Entry("DPC_CoOp", label="(3) + DHNO + weighting (w_n = w_b = 0.2)",
              paper=("dpc-ablation", "two-step+DHNO+weighting"), opts=("TRAINER.DPC.WEIGHT_NEW", "0.2"),
              tag="nodecouple"),
        Entry("DPC_CoOp", label="(4) weighting + decoupling, no DHNO",
              paper=("dpc-ablation", "two-step+weighting+decoupling"),
              unavailable="not available: needs DPC without hard negatives (DHNO), a variant we lack"),
        Entry("DPC_CoOp", label="(5) DPC", paper=("base2new", "DPC_CoOp"))),
        average_only=True, note="Rows (2) and (3) are our reading of the ablation's switches as DPC options."),
    Recipe("maple-b2n", "MaPLe (CVPR'23)", "Table 1 (base-to-new)", "base2new", (
        _b2n("ZeroshotCLIP"), _b2n("CoOp"), Entry("CoCoOp", unavailable=NO_COCOOP), _b2n("MaPLe"))),
    Recipe("kgcoop-b2n", "KgCoOp (CVPR'23)", "Table 1 (base-to-new)", "base2new", (
        _b2n("ZeroshotCLIP"), _b2n("CoOp"), Entry("CoCoOp", unavailable=NO_COCOOP), _b2n("KgCoOp"))),
    Recipe("promptsrc-b2n", "PromptSRC (ICCV'23)", "Table 1 (base-to-new)", "base2new", (
        _b2n("ZeroshotCLIP"), _b2n("CoOp"), Entry("CoCoOp", unavailable=NO_COCOOP), _b2n("KgCoOp"),
        _b2n("MaPLe"), _b2n("IVLP"), _b2n("PromptSRC"))),
    Recipe("promptkd-b2n", "PromptKD (CVPR'24)", "Table 1 (base-to-new)", "base2new", (
        _b2n("ZeroshotCLIP"), _b2n("CoOp"), Entry("CoCoOp", unavailable=NO_COCOOP), _b2n("MaPLe"),
        _b2n("PromptSRC"), _b2n("PromptKD")),
        note="PromptKD needs the ViT-L/14 PromptSRC teacher in place (see README, PromptKD)."),
    Recipe("promptsrc-fewshot", "PromptSRC (ICCV'23)", "supplementary few-shot table", "fewshot", (
        Entry("CoOp", paper=("fewshot", "CoOp")), Entry("CoCoOp", paper=("fewshot", "CoCoOp"), unavailable=NO_COCOOP),
        Entry("MaPLe", paper=("fewshot", "MaPLe")), Entry("PromptSRC", paper=("fewshot", "PromptSRC")))),
    Recipe("promptsrc-xd", "PromptSRC (ICCV'23)", "cross-dataset table", "xd", (
        Entry("CoOp", paper=("xd", "CoOp")), Entry("CoCoOp", paper=("xd", "CoCoOp"), unavailable=NO_COCOOP),
        Entry("MaPLe", paper=("xd", "MaPLe")), Entry("PromptSRC", paper=("xd", "PromptSRC")))),
    Recipe("promptsrc-dg", "PromptSRC (ICCV'23)", "domain-generalisation table", "dg", (
        Entry("ZeroshotCLIP", paper=("dg", "ZeroshotCLIP")), Entry("CoOp", paper=("dg", "CoOp")),
        Entry("CoCoOp", paper=("dg", "CoCoOp"), unavailable=NO_COCOOP), Entry("MaPLe", paper=("dg", "MaPLe")),
        Entry("PromptSRC", paper=("dg", "PromptSRC")))),
    Recipe("maple-xd", "MaPLe (CVPR'23)", "Table 2 (cross-dataset)", "xd", (
        Entry("CoOp", paper=("xd", "CoOp")), Entry("CoCoOp", paper=("xd", "CoCoOp"), unavailable=NO_COCOOP),
        Entry("MaPLe", paper=("xd", "MaPLe")))),
    Recipe("maple-dg", "MaPLe (CVPR'23)", "Table 3 (domain generalisation)", "dg", (
        Entry("ZeroshotCLIP", paper=("dg", "ZeroshotCLIP")), Entry("CoOp", paper=("dg", "CoOp")),
        Entry("CoCoOp", paper=("dg", "CoCoOp"), unavailable=NO_COCOOP), Entry("MaPLe", paper=("dg", "MaPLe")))),
    Recipe("dpl-b2n", "DPL (reconstruction)", "base-to-new", "base2new",
           (Entry("MaPLe"), Entry("DPL"), Entry("DPC_DPL")), reconstruction=True),
    Recipe("dpl-xd", "DPL (reconstruction)", "cross-dataset", "xd", (Entry("MaPLe"), Entry("DPL")),
           reconstruction=True),
    Recipe("dpl-dg", "DPL (reconstruction)", "domain generalisation", "dg", (Entry("MaPLe"), Entry("DPL")),
           reconstruction=True),
    Recipe("dgprompt-b2n", "DGPrompt (reconstruction)", "base-to-new", "base2new",
           (Entry("MaPLe"), Entry("DGPrompt"), Entry("DPC_DGPrompt")), reconstruction=True),
    Recipe("dgprompt-fewshot", "DGPrompt (reconstruction)", "few-shot", "fewshot", (Entry("MaPLe"), Entry("DGPrompt")),
           reconstruction=True),
)}


def get(name, add_methods=()):
    """The recipe `name`, with the user's methods (`METHOD[:CFG]`) added as rows without paper numbers, run
    with the table's shots (those of its first row)."""
    if name not in RECIPES:
        raise GridError(f"Unknown recipe '{name}'. Known: {', '.join(RECIPES)} (`--recipe list` shows them)")
    recipe = RECIPES[name]
    shots = recipe.entries[0].shots
    added = tuple(Entry(method, cfg, label=method, shots=shots) for method, cfg in map(parse_method, add_methods))
    return dataclasses.replace(recipe, entries=recipe.entries + added)


# ----------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------
class Job:
    """A recipe run as the launcher sees it: the method's run, with this row's opts, tag and shots."""

    def __init__(self, run, entry):
        self.run, self.entry = run, entry

    def __getattr__(self, name):  # done, started, name, size, run_dir, lock_file, stage, needs, log_name ...
        return getattr(self.run, name)

    def command(self, opts=()):
        env = [f"TAG={self.entry.tag}"] * bool(self.entry.tag)
        env += [f"SHOTS={self.entry.shots}"] * (self.entry.shots is not None)
        return [*(["env", *env] if env else []), *self.run.command([*self.entry.opts, *opts])]


def entry_runs(recipe, entry, output):
    """The runs of one row (none for an unavailable row)."""
    if entry.unavailable:
        return []
    seeds = ",".join(map(str, recipe.seeds))
    spec = f"{entry.method}:{entry.cfg}" if entry.cfg else entry.method
    if recipe.protocol == "base2new":
        return [Job(resolve(entry.method, d, s, entry.cfg, output, entry.shots, entry.tag), entry)
                for d in recipe.columns for s in recipe.seeds]
    if recipe.protocol == "fewshot":
        runs = protocol_grid("fewshot", spec, ",".join(recipe.columns), seeds, ",".join(map(str, recipe.shots)),
                             output, entry.tag)
    else:
        runs = protocol_grid("xd", spec, ",".join(recipe.columns), seeds, 16, output, entry.tag)
    return [Job(run, entry) for run in runs]


def launch_protocol(recipe):
    return "xd" if recipe.protocol == "dg" else recipe.protocol


def recipe_jobs(recipe, output):
    """(every run of the table, the runs to launch): a DPC backbone's column is launched by its DPC runs."""
    runs, seen = [], set()
    for entry in recipe.entries:
        for job in entry_runs(recipe, entry, output):
            if job.run_dir not in seen:
                seen.add(job.run_dir)
                runs.append(job)
    launched = [job for job in runs if not job.entry.made_by]
    return runs, launched


# ----------------------------------------------------------------------------------------------
# Listing and cost
# ----------------------------------------------------------------------------------------------
def print_list():
    rows = []
    for recipe in RECIPES.values():
        try:
            size = len(recipe_jobs(recipe, "output")[0])
        except GridError as err:
            size = f"? ({err})"
        rows.append((recipe.name, recipe.paper, recipe.table, recipe.protocol, size,
                     "reconstruction: no paper numbers" if recipe.reconstruction else ""))
    width = [max(len(str(r[i])) for r in rows + [("recipe", "paper", "table", "protocol", "runs", "")])
             for i in range(6)]
    for row in [("recipe", "paper", "table", "protocol", "runs", "")] + rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, width)).rstrip())


def run_hours(job):
    """Estimated device-hours of one base-to-new run, or None: the method's grid figure split over the
    grid's runs in proportion to the images each dataset's run touches."""
    entry = job.entry
    key = f"{entry.method}:{entry.cfg}" if f"{entry.method}:{entry.cfg}" in cost_estimates.GRID_HOURS else entry.method
    hours = cost_estimates.GRID_HOURS.get(key)
    if hours is None or not isinstance(job.run, Run):  # the figures are base-to-new runs
        return None
    share = dataset_size(job.dataset) / sum(dataset_size(d) for d in PAPER_DATASETS)
    return hours * share * len(PAPER_DATASETS) / cost_estimates.GRID_RUNS


def print_plan(recipe, runs, opts=()):
    """The dry run: every run of the table, how many are done, and the hours left per row."""
    done = sum(job.done for job in runs)
    print(f"Recipe {recipe.name}: {recipe.paper}, {recipe.table}; {len(recipe.columns)} datasets x "
          f"{len(recipe.seeds)} seeds; {len(runs)} runs, {done} done, {len(runs) - done} to run")
    if recipe.note:
        print(f"Note: {recipe.note}")
    print(f"Device-hours left per row: {cost_estimates.LABEL}"
          + ("; the figures cover base-to-new runs only" if recipe.protocol != "base2new" else ""))
    for entry in recipe.entries:
        if entry.unavailable:
            print(f"  {entry.name}: {entry.unavailable}")
            continue
        jobs = [job for job in runs if job.entry == entry]
        left = [job for job in jobs if not job.done]
        hours = [run_hours(job) for job in left]
        cost = ("no estimate" if any(h is None for h in hours) else f"{sum(hours):.2f} h left") if left else "0 h left"
        made = f" (made by {entry.made_by}'s stage 1)" if entry.made_by else ""
        print(f"  {entry.name}: {len(jobs) - len(left)}/{len(jobs)} done, {cost}{made}")
    print("Runs:")
    for job in runs:
        state = "done" if job.done else ("made by " + job.entry.made_by if job.entry.made_by else "to run")
        print(f"  [{state}] {shlex.join(job.command(opts))}")


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------
def accuracy(run_dir):
    path = os.path.join(run_dir, "results.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return float(json.load(f)["accuracy"])


def harmonic(base, new):
    return 2 * base * new / (base + new) if base + new else 0.0


def population_std(values):
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def metrics(recipe):
    if recipe.protocol == "base2new":
        return ("Base", "New", "H")
    if recipe.protocol == "fewshot":
        return tuple(f"K={k}" for k in recipe.shots)
    return ("Acc",)


def row_groups(recipe):
    """The table's row groups in the paper's order: base-to-new and few-shot, the average then the datasets;
    cross-dataset and DG, the ImageNet source, the targets, then their average (the source excluded)."""
    if recipe.average_only:
        return ("average",)
    if recipe.protocol in ("base2new", "fewshot"):
        return ("average", *recipe.columns)
    return (XD_SOURCE, *recipe.columns, "average")


def seed_values(recipe, entry, output):
    """{(group, metric): {seed: value}} of one row's finished runs (averages: seeds finished everywhere)."""
    values = {}
    for job in entry_runs(recipe, entry, output):
        run = job.run
        if recipe.protocol == "base2new":
            base, new = accuracy(run.train_dir), accuracy(run.test_dir)
            if base is None or new is None:
                continue
            for metric, value in zip(("Base", "New", "H"), (base, new, harmonic(base, new))):
                values.setdefault((run.dataset, metric), {})[run.seed] = value
        else:
            value = accuracy(run.run_dir)
            if value is None:
                continue
            metric = f"K={run.shots}" if recipe.protocol == "fewshot" else "Acc"
            values.setdefault((run.dataset, metric), {})[run.seed] = value
    for metric in metrics(recipe):
        if metric == "H":
            continue
        per_dataset = [values.get((d, metric), {}) for d in recipe.columns]
        seeds = set.intersection(*(set(v) for v in per_dataset)) if per_dataset else set()
        if seeds:
            values[("average", metric)] = {s: sum(v[s] for v in per_dataset) / len(per_dataset) for s in seeds}
    if recipe.protocol == "base2new" and ("average", "Base") in values:
        b, n = values[("average", "Base")], values[("average", "New")]
        values[("average", "H")] = {s: harmonic(b[s], n[s]) for s in b}
    return values


def paper_value(recipe, entry, group, metric):
    """(value or None, source) published for the cell."""
    if not entry.paper:
        return None, ""
    table, key = entry.paper
    if group == "average" and recipe.datasets and recipe.datasets != dataclasses.replace(recipe, datasets=()).columns:
        return None, ""  # a reduced recipe: its average is not the paper's
    published = PAPER_TABLES[table].get(key)
    if not published:
        return None, ""
    result = published["results"].get(group)
    if result is None:
        return None, published["source"]
    if recipe.protocol == "base2new":
        value = result[("Base", "New", "H").index(metric)]
    elif recipe.protocol == "fewshot":
        value = result.get(int(metric[2:]))
    else:
        value = result
    return value, published["source"]


@dataclass
class Cell:
    ours: float = None
    std: float = None
    seeds: int = 0
    expected: int = 0
    paper: float = None

    @property
    def diff(self):
        return None if self.ours is None or self.paper is None else self.ours - self.paper

    @property
    def marked(self):
        """Whether the difference exceeds what seed variation explains (module docstring's rule)."""
        if self.diff is None:
            return False
        return abs(self.diff) > (2 * self.std if self.seeds > 1 else MARGIN)


def table_cells(recipe, output):
    """{(group, entry index, metric): Cell} for every cell of the table, and the sources cited."""
    cells, sources = {}, []
    for i, entry in enumerate(recipe.entries):
        values = {} if entry.unavailable else seed_values(recipe, entry, output)
        expected = 1 if entry.method == "ZeroshotCLIP" and recipe.protocol != "base2new" else len(recipe.seeds)
        for group in row_groups(recipe):
            for metric in metrics(recipe):
                cell = Cell(expected=expected)
                cell.paper, source = paper_value(recipe, entry, group, metric)
                if source and source not in sources:
                    sources.append(source)
                seeds = values.get((group, metric), {})
                if seeds and metric == "H" and recipe.protocol == "base2new":
                    # H is the harmonic mean of the mean Base and mean New (the papers' convention)
                    base = values[(group, "Base")]
                    new = values[(group, "New")]
                    cell.ours = harmonic(sum(base.values()) / len(base), sum(new.values()) / len(new))
                elif seeds:
                    cell.ours = sum(seeds.values()) / len(seeds)
                if seeds:
                    cell.std, cell.seeds = population_std(list(seeds.values())), len(seeds)
                cells[group, i, metric] = cell
    return cells, sources


def group_name(group):
    if group == "average":
        return "Average"
    return {**PAPER_DATASETS, **VARIANTS}.get(group, (group,))[0]


def render(recipe, output, style="md"):
    """The table as text: per row group and row, each metric's ours (± std), the paper's and the difference."""
    cells, sources = table_cells(recipe, output)
    latex = style == "latex"
    esc = (lambda s: s.replace("_", r"\_").replace("&", r"\&").replace("%", r"\%").replace("#", r"\#")) if latex \
        else (lambda s: s)
    headers = ["Dataset", "Method"]
    for metric in metrics(recipe):
        headers += [metric, "paper", "diff"]
    rows = []
    for group in row_groups(recipe):
        for i, entry in enumerate(recipe.entries):
            row = [esc(group_name(group)), esc(entry.name)]
            for metric in metrics(recipe):
                cell = cells[group, i, metric]
                if entry.unavailable:
                    ours = "n/a"
                elif cell.ours is None:
                    ours = "missing"
                else:
                    ours = f"{cell.ours:.2f}"
                    if cell.seeds > 1 and metric != "H":
                        ours += (r" $\pm$ " if latex else " ± ") + f"{cell.std:.2f}"
                    if cell.seeds < cell.expected:
                        ours += f" ({cell.seeds}/{cell.expected} seeds)"
                paper = "-" if cell.paper is None else f"{cell.paper:.2f}"
                diff = "" if cell.diff is None else f"{cell.diff:+.2f}" + ("*" if cell.marked else "")
                row += [ours, paper, diff]
            rows.append(row)
    title = f"{recipe.paper}, {recipe.table} ({recipe.name}; ours = mean over seeds)"
    notes = [RULE]
    if recipe.protocol == "base2new":
        notes.append("H = HM(mean Base, mean New); Average = mean over the datasets, its H = HM(avg Base, avg New); "
                     "the average needs every dataset (seeds finished on all of them)")
    elif recipe.protocol == "fewshot":
        notes.append("Average = mean over the datasets per K")
    else:
        notes.append("Average = mean over the targets (the ImageNet source excluded)")
    if recipe.reconstruction:
        notes.append("Reconstruction: the method's own paper table is not reproduced; no published numbers")
    notes += [f"n/a: {e.name}: {e.unavailable}" for e in recipe.entries if e.unavailable]
    notes += [f"Paper numbers: {s}" for s in sources]
    if recipe.note:
        notes.append(recipe.note)
    if latex:
        lines = [f"% {title}", *(f"% {n}" for n in notes), r"\begin{tabular}{ll" + "rrr" * len(metrics(recipe)) + "}",
                 r"\toprule", " & ".join(esc(h) for h in headers) + r" \\", r"\midrule"]
        lines += [" & ".join(row).replace("*", r"$^{*}$") + r" \\" for row in rows]
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines)
    width = [max(len(str(r[c])) for r in [headers, *rows]) for c in range(len(headers))]
    fmt = lambda row: "| " + " | ".join(str(v).ljust(w) for v, w in zip(row, width)) + " |"  # noqa: E731
    lines = [f"{title}", "", fmt(headers), "|" + "|".join("-" * (w + 2) for w in width) + "|", *map(fmt, rows), ""]
    return "\n".join(lines + notes)
