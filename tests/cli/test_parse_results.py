"""parse_results.py on synthetic run folders: log scraping as the official parser does it,
results.json first, the paper's averaging convention, flags for partial grids, output formats."""
import csv
import io
import json
import os

import pytest

import parse_results
from engine import official_formats
from scripts.paper_numbers import PAPER

HEADER = ["***************", "** Arguments **", "Loading trainer: CoOp"]


def result_block(accuracy):
    """The trainer's test block; `accuracy` is a string so the decimals are the test's choice."""
    return ["Evaluate on the *test* set", "=> result", "* total: 1,000", "* correct: 969",
            f"* accuracy: {accuracy}%", "* error: 3.1%", "* macro_f1: 96.5%"]


def write(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def train_log(accuracy, signal="Finish training"):
    return HEADER + ["epoch [1/2] batch [1/1] loss 1.0 (1.0) acc 50.0 (50.0)", signal,
                     "Deploy the last-epoch model", *result_block(accuracy), "Elapsed: 0:00:05"]


def run_dir(root, phase, dataset, seed, method="CoOp", cfg="vit_b16_ctxv1"):
    return os.path.join(root, "base2new", phase, dataset, "shots_16", method, cfg, f"seed{seed}")


def write_results(directory, accuracy):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "results.json"), "w") as f:
        json.dump({"accuracy": accuracy, "macro_f1": accuracy - 1}, f)


def parse(capsys, *argv):
    parse_results.main([str(a) for a in argv])
    return capsys.readouterr().out


def table_rows(out):
    """Markdown table lines -> {first cell: [cells]} (the last table wins on repeated names)."""
    return {cells[0]: cells for cells in ([c.strip() for c in line.strip().strip("|").split("|")]
                                          for line in out.splitlines() if line.startswith("| "))}


# ---- log scraping -----------------------------------------

@pytest.mark.parametrize("printed, expected", [("96.9", 96.9), ("96.92", 96.92), ("1e2", 100.0)])
def test_one_and_two_decimal_accuracies(tmp_path, printed, expected):
    write(tmp_path / "log.txt", train_log(printed))
    assert official_formats.read_log(tmp_path / "log.txt", official_formats.TRAIN_SIGNALS) == expected


def test_result_block_before_the_end_signal_is_ignored(tmp_path):
    write(tmp_path / "log.txt", HEADER + result_block("11.11") + ["Finish training"] + result_block("88.88"))
    assert official_formats.read_log(tmp_path / "log.txt", official_formats.TRAIN_SIGNALS) == 88.88
    write(tmp_path / "early.txt", HEADER + result_block("11.11") + ["epoch [2/2] ..."])
    assert official_formats.read_log(tmp_path / "early.txt", official_formats.TRAIN_SIGNALS) is None


def test_both_end_signal_spellings_and_the_test_log_signal(tmp_path):
    write(tmp_path / "old.txt", train_log("70.00", signal="Finished training"))
    assert official_formats.read_log(tmp_path / "old.txt", official_formats.TRAIN_SIGNALS) == 70.0
    write(tmp_path / "eval.txt", HEADER + result_block("65.43"))
    assert official_formats.read_log(tmp_path / "eval.txt", official_formats.TEST_SIGNALS) == 65.43
    assert official_formats.read_log(tmp_path / "eval.txt", official_formats.TRAIN_SIGNALS) is None


def test_official_mode_output_and_a_log_without_the_signal(tmp_path, capsys):
    write(tmp_path / "seed1" / "log.txt", train_log("96.9"))
    write(tmp_path / "seed2" / "log.txt", HEADER + ["epoch [1/2] batch [1/1]"])  # crashed: no signal
    write(tmp_path / "seed3" / "log.txt", train_log("95.10"))
    write(tmp_path / "notes.txt", ["not a run"])
    out = parse(capsys, tmp_path)
    assert f"file: {tmp_path / 'seed1' / 'log.txt'}. accuracy: 96.90%. " in out.splitlines()
    assert "seed2" not in out
    assert out.splitlines()[-3:] == [f"Summary of directory: {tmp_path}", "* accuracy: 96.00% +- 0.90%", "==="]


def test_rerun_log_is_ignored_unless_newest_log(tmp_path, capsys):
    write(tmp_path / "seed1" / "log.txt", train_log("50.00"))
    write(tmp_path / "seed1" / "log.txt-2024-01-02-03-04-05", train_log("60.00"))
    write(tmp_path / "seed1" / "log.txt-2024-01-02-10-00-00", train_log("70.00"))
    assert "* accuracy: 50.00% +- 0.00%" in parse(capsys, tmp_path)
    assert "* accuracy: 70.00% +- 0.00%" in parse(capsys, tmp_path, "--newest-log")


def test_newest_log_falls_back_past_a_rerun_without_a_result(tmp_path, capsys):
    """A crashed rerun (newest log, no result) must not hide the result of an older log."""
    write(tmp_path / "seed1" / "log.txt", train_log("50.00"))
    write(tmp_path / "seed1" / "log.txt-2024-01-02-03-04-05", train_log("60.00"))
    write(tmp_path / "seed1" / "log.txt-2024-01-02-10-00-00", HEADER + ["epoch [1/2] batch [1/1]"])  # crashed
    write(tmp_path / "seed2" / "log.txt", HEADER + ["epoch [1/2] batch [1/1]"])  # crashed first run ...
    write(tmp_path / "seed2" / "log.txt-2024-01-03-00-00-00", HEADER + ["epoch [1/2] batch [1/1]"])
    write(tmp_path / "seed3" / "log.txt", train_log("40.00"))  # ... and a seed with no reruns at all
    write(tmp_path / "seed3" / "log.txt-2024-01-03-00-00-00", HEADER)
    out = parse(capsys, tmp_path, "--newest-log")
    assert f"file: {tmp_path / 'seed1' / 'log.txt-2024-01-02-03-04-05'}. accuracy: 60.00%. " in out.splitlines()
    assert f"file: {tmp_path / 'seed3' / 'log.txt'}. accuracy: 40.00%. " in out.splitlines()
    assert "seed2" not in out and "* accuracy: 50.00% +- 10.00%" in out
    # the default stays the official parser's: log.txt only
    assert "* accuracy: 45.00% +- 5.00%" in parse(capsys, tmp_path)
    write(tmp_path / "seed2" / "log.txt-2024-01-04-00-00-00", train_log("70.00"))
    assert official_formats.read_run(tmp_path / "seed2", official_formats.TRAIN_SIGNALS) == (None, None)
    assert official_formats.read_run(tmp_path / "seed2", official_formats.TRAIN_SIGNALS, newest_log=True)[0] == 70.0


def test_ci95_arithmetic(tmp_path, capsys):
    for seed, acc in enumerate(("70.00", "72.00", "74.00"), 1):
        write(tmp_path / f"seed{seed}" / "log.txt", HEADER + result_block(acc))
    # population std sqrt(8/3) = 1.633; 1.96 * 1.633 / sqrt(3) = 1.848
    assert "* accuracy: 72.00% +- 1.63%" in parse(capsys, tmp_path, "--test-log")
    assert "* accuracy: 72.00% +- 1.85%" in parse(capsys, tmp_path, "--test-log", "--ci95")


def test_keyword_and_multi_exp(tmp_path, capsys):
    for exp, acc in (("a", "60.00"), ("b", "80.00")):
        write(tmp_path / exp / "seed1" / "log.txt", HEADER + result_block(acc))
    out = parse(capsys, tmp_path, "--test-log", "--multi-exp")
    assert out.splitlines()[-2:] == ["Average performance", "* accuracy: 70.00%"]
    assert "* macro_f1: 96.50% +- 0.00%" in parse(capsys, tmp_path / "a", "--test-log", "--keyword", "macro_f1")


def test_nothing_found_is_an_error(tmp_path):
    write(tmp_path / "seed1" / "log.txt", HEADER)
    with pytest.raises(SystemExit, match="Nothing found"):
        parse_results.main([str(tmp_path)])


# ---- table mode ------------------------------------------------------------------------------

def test_results_json_is_preferred_over_the_log(tmp_path, capsys):
    base = run_dir(tmp_path, "train_base", "dtd", 1)
    write(os.path.join(base, "log.txt"), train_log("60.00"))
    write_results(base, 50.0)
    write_results(run_dir(tmp_path, "test_new", "dtd", 1), 50.0)
    write(os.path.join(run_dir(tmp_path, "test_new", "dtd", 1), "log.txt"), HEADER + result_block("50.00"))
    assert table_rows(parse(capsys, tmp_path))["DTD"][1:4] == ["50.00", "50.00", "50.00"]
    assert table_rows(parse(capsys, tmp_path, "--from-logs"))["DTD"][1:4] == ["60.00", "50.00", "54.55"]
    assert official_formats.read_run(base, official_formats.TRAIN_SIGNALS)[1] == os.path.join(base, "results.json")


def test_table_reads_logs_of_official_runs(tmp_path, capsys):
    for seed, (b, n) in enumerate((("80.0", "70.0"), ("82.0", "72.0")), 1):
        write(os.path.join(run_dir(tmp_path, "train_base", "eurosat", seed), "log.txt"), train_log(b))
        write(os.path.join(run_dir(tmp_path, "test_new", "eurosat", seed), "log.txt"), HEADER + result_block(n))
    out = parse(capsys, tmp_path / "base2new")  # the base2new folder itself works too
    assert table_rows(out)["EuroSAT"][1:] == ["81.00 ± 1.00", "71.00 ± 1.00", "75.67", "2"]


def test_average_row_is_the_hm_of_averaged_base_and_new(tmp_path, capsys):
    """CoCoOp Table 1, zero-shot CLIP: means 69.34 / 74.22 -> 71.70; the mean of per-dataset H is 71.59."""
    for dataset, (base, new, _) in PAPER["ZeroshotCLIP"]["results"].items():
        if dataset != "average":
            write_results(run_dir(tmp_path, "train_base", dataset, 1, "ZeroshotCLIP", "vit_b16"), base)
            write_results(run_dir(tmp_path, "test_new", dataset, 1, "ZeroshotCLIP", "vit_b16"), new)
    out = parse(capsys, tmp_path, "--mean-of-h", "--compare-paper")
    cells = table_rows(out)["**Average (11)**"]
    assert cells[1:4] == ["69.34", "74.22", "**71.70**"]
    assert cells[5] == "71.59"
    assert cells[6:] == ["69.34 / 74.22 / 71.70", "+0.00"]
    assert "### CLIP (zero-shot) (vit_b16, 16 shots)" in out
    assert "Paper: CoCoOp (CVPR'22) Table 1" in out


def test_partial_grid_flags_missing_seeds_and_datasets(tmp_path, capsys):
    for seed in (1, 2, 3):
        write_results(run_dir(tmp_path, "train_base", "caltech101", seed), 90.0 + seed)
        write_results(run_dir(tmp_path, "test_new", "caltech101", seed), 80.0 + seed)
    for seed in (1, 2):
        write_results(run_dir(tmp_path, "train_base", "dtd", seed), 70.0)
    write_results(run_dir(tmp_path, "test_new", "dtd", 1), 50.0)
    os.makedirs(run_dir(tmp_path, "train_base", "eurosat", 1))  # started, nothing finished
    out = parse(capsys, tmp_path)
    rows = table_rows(out)
    assert rows["Caltech101"][1:5] == ["92.00 ± 0.82", "82.00 ± 0.82", "86.71", "3"]
    assert rows["DTD"][1:5] == ["70.00 ± 0.00", "50.00", "58.33", "1 (missing seeds: base 3; new 2,3)"]
    assert rows["EuroSAT"][1:5] == ["–", "–", "–", "0 (missing seeds: base 1,2,3; new 1,2,3)"]
    # the average covers the two complete datasets only, and says so
    assert rows["**Average (2)**"][1:5] == ["81.00", "66.00", "**72.73**", "without eurosat"]
    out = parse(capsys, tmp_path, "--seeds", "1,2,3,4", "--datasets", "caltech101")
    assert "3 (missing seeds: base 4; new 4)" in out


def test_reconstructed_methods_are_labelled_and_overview_lists_every_group(tmp_path, capsys):
    for method in ("DPL", "DGPrompt", "CoOp"):
        write_results(run_dir(tmp_path, "train_base", "dtd", 1, method, "cfg"), 80.0)
        write_results(run_dir(tmp_path, "test_new", "dtd", 1, method, "cfg"), 60.0)
    out = parse(capsys, tmp_path)
    assert "### DPL (reconstructed) (cfg, 16 shots)" in out
    assert "### DGPrompt (reconstructed) (cfg, 16 shots)" in out
    overview = out[out.index("### Averages"):]
    assert [table_rows(overview)[m][3:] for m in ("CoOp", "DGPrompt (reconstructed)", "DPL (reconstructed)")] == \
        [["80.00", "60.00", "**68.57**", "1/1"]] * 3
    only = parse(capsys, tmp_path, "--methods", "CoOp")
    assert "DPL" not in only and "### Averages" not in only


def test_csv_and_latex_formats(tmp_path, capsys):
    for seed, (b, n) in enumerate(((80.0, 60.0), (82.0, 62.0)), 1):
        write_results(run_dir(tmp_path, "train_base", "oxford_pets", seed), b)
        write_results(run_dir(tmp_path, "test_new", "oxford_pets", seed), n)
    rows = list(csv.DictReader(io.StringIO(parse(capsys, tmp_path, "--format", "csv", "--compare-paper"))))
    assert [r["dataset"] for r in rows] == ["oxford_pets", "average"]
    assert rows[0]["base"] == "81.0" and rows[0]["base_std"] == "1.0" and rows[0]["new_seeds"] == "2"
    assert rows[0]["H"] == "69.59" and rows[0]["paper_H"] == "94.47"
    latex = parse(capsys, tmp_path, "--format", "latex")
    assert r"81.00 $\pm$ 1.00" in latex and r"\hline" in latex and r"\textbf{69.59}" in latex
    assert "% CoOp (vit_b16_ctxv1, 16 shots)" in latex


def test_official_kgcoop_layout_keeps_each_w_apart_and_odd_shot_folders_are_skipped(tmp_path, capsys):
    """KgCoOp's scripts write `train_base/<D>/shots_16_<W>/KgCoOp/vit_b16_ep100_ctxv1/seed<S>` (docs/methods/kgcoop.md)."""
    cfg = "vit_b16_ep100_ctxv1"
    for w, (b, n) in (("8.0", ("80.00", "70.00")), ("2.0", ("90.00", "60.00"))):
        for phase, lines in (("train_base", train_log(b, signal="Finished training")),
                             ("test_new", HEADER + result_block(n))):
            directory = run_dir(tmp_path, phase, "dtd", 1, "KgCoOp", cfg).replace("shots_16", f"shots_16_{w}")
            write(os.path.join(directory, "log.txt"), lines)
    write_results(run_dir(tmp_path, "train_base", "dtd", 1, "KgCoOp", cfg), 50.0)  # plain shots_16 too
    write_results(run_dir(tmp_path, "test_new", "dtd", 1, "KgCoOp", cfg), 50.0)
    odd = run_dir(tmp_path, "train_base", "dtd", 1, "KgCoOp", cfg).replace("shots_16", "shots_all")
    write_results(odd, 99.0)
    write_results(odd.replace("train_base", "test_new"), 99.0)
    parse_results.main([str(tmp_path)])
    out, err = capsys.readouterr()
    assert err.count("Warning: skipping") == 2 and "shots_all" in err  # once per folder, train_base and test_new
    assert f"### KgCoOp ({cfg}_W8.0, 16 shots)" in out and f"### KgCoOp ({cfg}_W2.0, 16 shots)" in out
    assert f"### KgCoOp ({cfg}, 16 shots)" in out
    overview = [[c.strip() for c in line.strip().strip("|").split("|")]
                for line in out[out.index("### Averages"):].splitlines() if line.startswith("| KgCoOp")]
    assert sorted(cells[1:6] for cells in overview) == [
        [cfg, "16", "50.00", "50.00", "**50.00**"],
        [cfg + "_W2.0", "16", "90.00", "60.00", "**72.00**"],
        [cfg + "_W8.0", "16", "80.00", "70.00", "**74.67**"]]
    assert "99.00" not in out
    rows = list(csv.DictReader(io.StringIO(parse(capsys, tmp_path, "--format", "csv"))))
    assert {r["config"] for r in rows} == {cfg, cfg + "_W8.0", cfg + "_W2.0"}
    assert parse_results.config_label(cfg, "debug") == cfg + "_debug"


def test_latex_escapes_names_exactly_once(tmp_path, capsys):
    for dataset in ("my_data", "dtd"):
        write_results(run_dir(tmp_path, "train_base", dataset, 1, "My_Method", "cfg_100%_a&b"), 80.0)
        write_results(run_dir(tmp_path, "test_new", dataset, 1, "My_Method", "cfg_100%_a&b"), 60.0)
    write_results(run_dir(tmp_path, "train_base", "odd_set", 1, "My_Method", "cfg_100%_a&b"), 80.0)  # no new
    write_results(run_dir(tmp_path, "train_base", "dtd", 1, "CoOp", "x"), 80.0)  # a second group: the overview
    write_results(run_dir(tmp_path, "test_new", "dtd", 1, "CoOp", "x"), 60.0)
    latex = parse(capsys, tmp_path, "--format", "latex")
    table_lines = [line for line in latex.splitlines() if not line.startswith("%")]
    body = "\n".join(table_lines)
    assert r" my\_data " in body and r"without odd\_set" in body
    assert r"My\_Method" in body and r"cfg\_100\%\_a\&b" in body
    assert "\\\\_" not in body and "\\\\%" not in body  # not escaped twice
    for line in table_lines:  # every unescaped & is a column separator: same count on each row
        if line.endswith("\\\\"):
            assert line.replace(r"\&", "").count("&") in (4, 6)
    assert parse_results.latex_escape(r"a_b%c&d#e$f{g}h~i^j\k") == \
        r"a\_b\%c\&d\#e\$f\{g\}h\textasciitilde{}i\textasciicircum{}j\textbackslash{}k"
    assert "| my_data " in parse(capsys, tmp_path)  # Markdown is left as it is


def test_sweep_curve_key_is_read_from_config_yaml(tmp_path):
    directory = run_dir(tmp_path, "train_base", "dtd", 1, "DPC_CoOp", "w02")
    os.makedirs(directory)
    with open(os.path.join(directory, "config.yaml"), "w") as f:
        f.write("TRAINER:\n  DPC:\n    WEIGHT_BASE: 0.2\n  NAME: DPC_CoOp\n")
    assert parse_results.config_value(directory, "TRAINER.DPC.WEIGHT_BASE") == 0.2
    assert parse_results.config_value(directory, "TRAINER.DPC.MISSING") is None


def test_plot_writes_bars_and_sweep_curves(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    for folder, weight, base in (("w01", 0.1, 84.0), ("w02", 0.2, 85.0), ("w05", 0.5, 84.5)):
        for phase, value in (("train_base", base), ("test_new", 68.0)):
            directory = run_dir(tmp_path, phase, "dtd", 1, "DPC_CoOp", folder)
            write_results(directory, value)
            with open(os.path.join(directory, "config.yaml"), "w") as f:
                f.write(f"TRAINER:\n  DPC:\n    WEIGHT_BASE: {weight}\n")
    parse(capsys, tmp_path, "--plot", tmp_path / "plots", "--sweep-key", "TRAINER.DPC.WEIGHT_BASE")
    written = sorted(os.listdir(tmp_path / "plots"))
    assert written == ["bars_DPC_CoOp_w01_shots16.png", "bars_DPC_CoOp_w02_shots16.png",
                       "bars_DPC_CoOp_w05_shots16.png", "sweep_DPC_CoOp_WEIGHT_BASE_shots16.png"]


def test_cells_selected_on_test_data_are_marked(tmp_path, capsys):
    """PromptKD's official best_val picks the epoch on the base test set: its results.json says so, the table marks it."""
    for seed in (1, 2):
        for phase, accuracy in (("train_base", 90.0), ("test_new", 80.0)):
            directory = run_dir(tmp_path, phase, "dtd", seed, method="PromptKD", cfg="vit_b16_c2_ep20_batch8_4+4ctx")
            os.makedirs(directory, exist_ok=True)
            with open(os.path.join(directory, "results.json"), "w") as f:
                json.dump({"accuracy": accuracy, "selected_epoch": 3, "selected_on_test": seed == 1}, f)
        write_results(run_dir(tmp_path, "train_base", "dtd", seed), 70.0)
        write_results(run_dir(tmp_path, "test_new", "dtd", seed), 60.0)
    out = parse(capsys, tmp_path)
    sections = {title.split(" ")[0]: body for title, body in
                (part.split("\n", 1) for part in out.split("### ")[1:])}
    kd_row = table_rows(sections["PromptKD"])["DTD"]
    assert kd_row[1].endswith(parse_results.TEST_SELECTION_MARK) and kd_row[2].endswith(parse_results.TEST_SELECTION_MARK)
    assert "selected by accuracy on test data" in sections["PromptKD"]
    assert parse_results.TEST_SELECTION_MARK not in sections["CoOp"]
    rows = list(csv.DictReader(io.StringIO(parse(capsys, tmp_path, "--format", "csv"))))
    assert {r["method"]: r["selected_on_test"] for r in rows if r["dataset"] == "dtd"} == {"PromptKD": "base,new",
                                                                                        "CoOp": ""}
