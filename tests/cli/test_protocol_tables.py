"""parse_results.py --protocol fewshot|xd|dg on synthetic run folders: the official few-shot and
cross-dataset layouts parse to the official parser's means, averages are taken over the right columns
(ImageNet never averaged in), gaps are flagged, published numbers compared, and zero-shot CLIP and
DPC's setting are shown."""
import csv
import io
import json
import os
import sys

import pytest

import parse_results
from scripts.protocol_paper_numbers import DG_PAPER, FEWSHOT_PAPER, XD_PAPER
from scripts.methods import PAPER_DATASETS, DG_TARGETS, XD_TARGETS
from tests.helpers.official import official_parse_test_res

COOP_VARIANT = "nctx16_cscFalse_ctpend"
COCOOP_CFG = "vit_b16_c4_ep10_batch1_ctxv1_16shots"


def write(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def result_block(accuracy, total=1000):
    return ["Evaluate on the *test* set", "=> result", f"* total: {total:,}", "* correct: 900",
            f"* accuracy: {accuracy}%", "* error: 10.0%", "* macro_f1: 89.0%"]


def train_log(accuracy, signal="Finish training"):
    """A Dassl training log as the official scripts leave it (Dassl >= 0.6.2 prints 1 decimal)."""
    return ["Loading trainer: CoOp", "epoch [1/1] batch [1/1] time 0.1 (0.1) loss 1.0 (1.0) lr 2.0000e-03 eta 0:00:00",
            "Checkpoint saved to prompt_learner/model.pth.tar-1", signal, "Deploy the last-epoch model",
            *result_block(accuracy), "Elapsed: 0:00:05"]


def eval_log(accuracy, total=1000):
    return ["Loading trainer: CoCoOp", 'Loading weights to prompt_learner from "m/model.pth.tar-10" (epoch = 10)',
            *result_block(accuracy, total)]


def write_results(directory, accuracy, total=100, config_yaml=None):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "results.json"), "w") as f:
        json.dump({"accuracy": accuracy, "total": total}, f)
    if config_yaml:
        with open(os.path.join(directory, "config.yaml"), "w") as f:
            f.write(config_yaml)


def parse(capsys, *argv):
    parse_results.main([str(a) for a in argv])
    return capsys.readouterr().out


def csv_rows(capsys, *argv):
    return list(csv.DictReader(io.StringIO(parse(capsys, *argv, "--format", "csv"))))


def cells(rows, method):
    """{(dataset, shots): (accuracy, std, seeds, fewer_seeds, paper)} of one method's CSV rows."""
    return {(r["dataset"], int(r["shots"])): (float(r["accuracy"]) if r["accuracy"] else None, r["std"], r["seeds"],
                                              r["fewer_seeds"], float(r["paper"]) if r["paper"] else None)
            for r in rows if r["method"] == method}


def table_rows(out):
    return {cells[0]: cells for cells in ([c.strip() for c in line.strip().strip("|").split("|")]
                                          for line in out.splitlines() if line.startswith("| "))}


# ---- the official layouts, read from their logs ----------------------------------------------

def official_tree(root):
    """CoOp's main.sh few-shot folders (3 datasets, K = 1, 2, ImageNet on its 50-epoch config) and CoCoOp's
    xd folders (ImageNet source, 2 targets, 2 variants), 3 seeds each, with the official logs' quirks: a
    rerun log beside `log.txt` and one seed whose log ends without the end signal (crashed)."""
    accuracy = iter(f"{70 + (i * 7.3) % 25:.1f}" for i in range(1000))
    fewshot = {}
    for dataset in ("imagenet", "caltech101", "eurosat"):
        for k, config in ((1, "vit_b16_ep50"), (2, "vit_b16_ep50" if dataset == "imagenet" else "vit_b16_ep100")):
            folder = os.path.join(root, dataset, "CoOp", f"{config}_{k}shots", COOP_VARIANT)
            fewshot[(dataset, k)] = folder
            for seed in (1, 2, 3):
                signal = "Finish trainin" if (dataset, k, seed) == ("eurosat", 2, 3) else "Finish training"
                write(os.path.join(folder, f"seed{seed}", "log.txt"), train_log(next(accuracy), signal))
            write(os.path.join(folder, "seed1", "log.txt-2022-10-08-21-10-24"), train_log("1.0"))
    xd = {"imagenet": os.path.join(root, "imagenet", "CoCoOp", COCOOP_CFG)}
    for seed in (1, 2, 3):
        write(os.path.join(xd["imagenet"], f"seed{seed}", "log.txt"), train_log(next(accuracy)))
    for target in ("caltech101", "dtd", "imagenetv2", "imagenet_a"):
        xd[target] = os.path.join(root, "evaluation", "CoCoOp", COCOOP_CFG, target)
        for seed in (1, 2, 3):
            write(os.path.join(xd[target], f"seed{seed}", "log.txt"), eval_log(next(accuracy), 2465))
    return fewshot, xd


def test_official_layouts_give_the_official_parser_means(tmp_path, capsys):
    fewshot, xd = official_tree(tmp_path)
    rows = cells(csv_rows(capsys, tmp_path, "--protocol", "fewshot"), "CoOp")
    for (dataset, k), folder in fewshot.items():
        mean, std = official_parse_test_res(folder)
        assert rows[(dataset, k)][:2] == (round(mean, 2), str(round(std, 2)))
    assert rows[("eurosat", 2)][2:4] == ("2", "1")  # the crashed seed is dropped, and flagged
    for k in (1, 2):  # Average = mean over the datasets
        assert rows[("average", k)][0] == pytest.approx(
            sum(official_parse_test_res(fewshot[(d, k)])[0] for d in ("imagenet", "caltech101", "eurosat")) / 3,
            abs=0.005)

    signals = {"imagenet": "Finish training"}
    for protocol, targets in (("xd", ("caltech101", "dtd")), ("dg", ("imagenetv2", "imagenet_a"))):
        rows = cells(csv_rows(capsys, tmp_path, "--protocol", protocol), "CoCoOp")
        means = {d: official_parse_test_res(xd[d], signals.get(d, "=> result"))[0] for d in ("imagenet", *targets)}
        for dataset, mean in means.items():
            assert rows[(dataset, 16)][0] == round(mean, 2)
        assert rows[("average", 16)][0] == round(sum(means[t] for t in targets) / 2, 2)  # ImageNet left out
    out = parse(capsys, tmp_path, "--protocol", "xd")
    assert table_rows(out)["test images"][2:5] == ["1,000", "2,465", "2,465"]  # from the logs' `* total:` lines


def test_coop_ijcv_cross_dataset_folders_are_sources_not_fewshot_runs(tmp_path, capsys):
    """CoOp's eval.sh evaluates main.sh's ImageNet run: that folder becomes the cross-dataset source."""
    source = tmp_path / "imagenet" / "CoOp" / "vit_b16_ep50_16shots" / COOP_VARIANT
    write(str(source / "seed1" / "log.txt"), train_log("71.9"))
    write(str(tmp_path / "dtd" / "CoOp" / "vit_b16_16shots" / COOP_VARIANT / "seed1" / "log.txt"), train_log("60.0"))
    target = tmp_path / "evaluation" / "CoOp" / "vit_b16_ep50_16shots" / COOP_VARIANT / "dtd" / "seed1"
    write(str(target / "log.txt"), eval_log("43.2"))
    assert set(cells(csv_rows(capsys, tmp_path, "--protocol", "fewshot"), "CoOp")) == {("dtd", 16), ("average", 16)}
    xd = csv_rows(capsys, tmp_path, "--protocol", "xd")
    assert {(r["dataset"], r["accuracy"], r["variant"]) for r in xd} == {
        ("imagenet", "71.9", COOP_VARIANT), ("dtd", "43.2", COOP_VARIANT), ("average", "43.2", COOP_VARIANT)}


# ---- our layouts: averaging, gaps, zero-shot CLIP, DPC's setting ------------------------------

def ours(root, method, dataset, k, seed, cfg="cfg"):
    return os.path.join(root, "few_shot", dataset, method, f"{cfg}_{k}shots", f"seed{seed}")


def test_fewshot_averages_over_datasets_and_flags_gaps(tmp_path, capsys):
    values = {("caltech101", 1): [90.0, 91.0, 92.5], ("caltech101", 4): [94.0, 95.0, 96.0],
              ("dtd", 1): [50.0, 52.0, 54.0], ("dtd", 4): [60.0, 61.0], ("eurosat", 1): [70.0, 75.0, 80.0]}
    for (dataset, k), accs in values.items():
        for seed, acc in enumerate(accs, 1):
            write_results(ours(tmp_path, "MaPLe", dataset, k, seed, "ep5" if k < 4 else "ep10"), acc)
    for dataset, acc in (("caltech101", 80.0), ("dtd", 40.0), ("eurosat", 45.5), ("imagenet_a", 30.0)):
        write_results(os.path.join(tmp_path, "ZeroshotCLIP", "vit_b16", dataset), acc)
    rows = cells(csv_rows(capsys, tmp_path, "--protocol", "fewshot"), "MaPLe")
    assert rows[("caltech101", 1)][:3] == (91.17, "1.03", "3")
    assert rows[("dtd", 4)][2:4] == ("2", "1")  # seed 3 missing
    assert rows[("average", 1)][0] == round(((90.0 + 91.0 + 92.5) / 3 + 52.0 + 75.0) / 3, 2)
    assert rows[("average", 4)][0] is None  # EuroSAT has no 4-shot result: never an average of fewer datasets
    zero_shot = cells(csv_rows(capsys, tmp_path, "--protocol", "fewshot"), "ZeroshotCLIP")
    assert zero_shot[("average", 0)][0] == round((80.0 + 40.0 + 45.5) / 3, 2)  # not over ImageNet-A
    out = parse(capsys, tmp_path, "--protocol", "fewshot")
    assert "### MaPLe (1 shot: ep5; 4 shots: ep10)" in out
    assert table_rows(out)["DTD"][1:] == ["52.00 ± 1.63", "60.50 ± 0.50†"]
    assert "Average left blank for K=4: a dataset has no result" in out and "† fewer seeds than 1,2,3: DTD K=4" in out
    assert table_rows(out)["CLIP (zero-shot)"][1:] == ["vit_b16", "55.17", "–", "–"]  # the overview
    assert table_rows(parse(capsys, tmp_path, "--protocol", "fewshot", "--datasets", "caltech101,dtd"))[
        "MaPLe"][2:] == ["–", "71.58", "77.75"]


def test_two_configs_at_the_same_k_get_their_own_tables(tmp_path, capsys):
    for cfg, acc in (("a", 50.0), ("b", 60.0)):
        write_results(ours(tmp_path, "CoOp", "dtd", 1, 1, cfg), acc)
    out = parse(capsys, tmp_path, "--protocol", "fewshot")
    assert "### CoOp (config a)" in out and "### CoOp (config b)" in out


def xd_run(root, method, dataset, seed, cfg="cfg_16shots"):
    if dataset == "imagenet":
        return os.path.join(root, "imagenet", method, cfg, f"seed{seed}")
    return os.path.join(root, "evaluation", method, cfg, dataset, f"seed{seed}")


def test_transfer_averages_leave_imagenet_out_and_zero_shot_has_a_row(tmp_path, capsys):
    accs = {"imagenet": (70.0, 72.0), "caltech101": (93.0, 94.0), "dtd": (40.0, 44.0), "imagenetv2": (60.0, 62.0),
            "imagenet_sketch": (45.0, 46.0)}
    for dataset, values in accs.items():
        for seed, acc in enumerate(values, 1):
            write_results(xd_run(tmp_path, "CoOp", dataset, seed), acc, total=1234)
    for dataset, acc, total in (("imagenet", 66.7, 1234), ("caltech101", 93.0, 1234), ("imagenetv2", 60.8, 999)):
        write_results(os.path.join(tmp_path, "ZeroshotCLIP", "vit_b16", dataset), acc, total)
    xd = csv_rows(capsys, tmp_path, "--protocol", "xd")
    assert cells(xd, "CoOp")[("average", 16)][0] == (93.5 + 42.0) / 2 and cells(xd, "CoOp")[("imagenet", 16)][0] == 71.0
    assert cells(xd, "ZeroshotCLIP")[("average", 0)][0] is None  # no DTD run
    dg = csv_rows(capsys, tmp_path, "--protocol", "dg")
    assert cells(dg, "CoOp")[("average", 16)][0] == (61.0 + 45.5) / 2
    assert {r["dataset"] for r in dg} == {"imagenet", "imagenetv2", "imagenet_sketch", "average"}
    out = parse(capsys, tmp_path, "--protocol", "dg")
    assert table_rows(out)["CLIP (zero-shot)"][1:] == ["vit_b16", "66.70", "60.80", "–", "–"]
    assert table_rows(out)["test images"][2:4] == ["1,234", "999/1,234"]  # a split that differs shows
    assert "CLIP (zero-shot): no result on ImageNet-Sketch, so no average" in out


def test_compare_paper(tmp_path, capsys):
    for dataset in PAPER_DATASETS:  # PromptSRC's 11 datasets at K = 1, each 0.5 below the paper
        write_results(ours(tmp_path, "PromptSRC", dataset, 1, 1), FEWSHOT_PAPER["PromptSRC"]["results"][dataset][1] - 0.5)
    for dataset in ("imagenet", *XD_TARGETS, *DG_TARGETS):  # MaPLe: 1 above on every cross-dataset cell
        paper = XD_PAPER["MaPLe"]["results"].get(dataset) or DG_PAPER["MaPLe"]["results"][dataset]
        write_results(xd_run(tmp_path, "MaPLe", dataset, 1), paper + 1.0)
    out = parse(capsys, tmp_path, "--protocol", "fewshot", "--compare-paper")
    rows = table_rows(out)
    assert rows["Published average"][1] == "72.32" and rows["Δ"][1] == "-0.50"
    assert "Published: PromptSRC (ICCV'23) supplementary Table 13" in out
    xd = table_rows(parse(capsys, tmp_path, "--protocol", "xd", "--compare-paper"))
    assert xd["MaPLe"][-2:] == ["**67.30**", "+1.00"] and xd["↳ published"][-2] == "66.30"
    rows = cells(csv_rows(capsys, tmp_path, "--protocol", "dg", "--compare-paper"), "MaPLe")
    assert rows[("average", 16)][4] == 60.28 and rows[("imagenet_r", 16)][4] == 76.98
    partial = table_rows(parse(capsys, tmp_path, "--protocol", "xd", "--compare-paper", "--datasets", "dtd,eurosat"))
    assert partial["↳ published"][-2] == f"{(46.49 + 48.06) / 2:.2f}"  # the paper's cells over the same targets


def test_every_protocol_found_is_printed_and_csv_needs_one(tmp_path, capsys):
    write_results(ours(tmp_path, "CoOp", "dtd", 1, 1), 50.0)
    write_results(xd_run(tmp_path, "CoOp", "imagenet", 1), 70.0)
    write_results(xd_run(tmp_path, "CoOp", "imagenet_r", 1), 75.0)
    os.makedirs(tmp_path / "base2new" / "train_base" / "dtd" / "shots_16" / "CoOp" / "cfg" / "seed1")
    write_results(str(tmp_path / "base2new" / "train_base" / "dtd" / "shots_16" / "CoOp" / "cfg" / "seed1"), 80.0)
    out = parse(capsys, tmp_path)
    assert [line for line in out.splitlines() if line.startswith("## ")] == [
        "## Base-to-new", "## Few-shot", "## Domain generalisation"]
    with pytest.raises(SystemExit, match="several protocols .*pick one with --protocol"):
        parse(capsys, tmp_path, "--format", "csv")
    with pytest.raises(SystemExit, match="No cross-dataset transfer runs"):
        parse(capsys, tmp_path, "--protocol", "xd", "--datasets", "imagenet_r", "--methods", "MaPLe")
    assert "\\textbf{" in parse(capsys, tmp_path, "--protocol", "dg", "--format", "latex")


def test_dpc_rows_state_their_all_classes_prompt_setting(tmp_path, capsys):
    write_results(xd_run(tmp_path, "DPC_CoOp", "imagenet", 1), 72.0,
                  config_yaml="TRAINER:\n  DPC:\n    ALL_CLASSES_PROMPT: by_source\n")
    write_results(xd_run(tmp_path, "DPC_CoOp", "dtd", 1), 44.0)  # no config.yaml: a run of the official code
    write_results(xd_run(tmp_path, "StackSPLE_CoOp", "imagenet", 1), 72.0)
    write_results(xd_run(tmp_path, "StackSPLE_CoOp", "dtd", 1), 44.0)
    rows = table_rows(parse(capsys, tmp_path, "--protocol", "xd"))
    assert "CoOp + DPC [all-classes prompt: by_source/reference]" in rows
    assert "StackSPLE_CoOp [all-classes prompt: reference]" in rows


def test_plots_or_a_clear_message_without_matplotlib(tmp_path, capsys, monkeypatch):
    write_results(ours(tmp_path, "CoOp", "dtd", 1, 1), 50.0)
    write_results(ours(tmp_path, "CoOp", "dtd", 2, 1), 55.0)
    write_results(os.path.join(tmp_path, "ZeroshotCLIP", "vit_b16", "dtd"), 44.0)
    write_results(xd_run(tmp_path, "CoOp", "imagenet", 1), 70.0)
    write_results(xd_run(tmp_path, "CoOp", "dtd", 1), 45.0)
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "matplotlib", None)
        parse_results.main([str(tmp_path), "--protocol", "fewshot", "--plot", str(tmp_path / "plots")])
        assert "--plot: matplotlib is not installed (pip install matplotlib)" in capsys.readouterr().err
    pytest.importorskip("matplotlib")
    for protocol in ("fewshot", "xd"):
        parse(capsys, tmp_path, "--protocol", protocol, "--plot", tmp_path / "plots")
    assert sorted(os.listdir(tmp_path / "plots")) == ["fewshot_curves.png", "xd_bars.png"]
