"""CoOp and zero-shot CLIP end to end through `train.main` on a synthetic Caltech101."""
import glob
import json
import os
import re

import pytest
import torch

from engine.checkpoint import checkpoint_epochs, load_checkpoint
from engine.errors import DatasetError
from tests.helpers.cli import read_results, run_train, train_once
from tests.helpers.interrupt import killed_in_epoch
from tests.helpers.official import make_official_style_checkpoint


def run(data_root, tiny_clip_path, tiny_opts, output_dir, *flags, opts=(), trainer="CoOp", dataset="caltech101"):
    """train.py with the tiny CLIP: 2 shots, 2 epochs, 4 context tokens, base classes by default."""
    defaults = ["OPTIM.MAX_EPOCH", "2", "TRAINER.COOP.N_CTX", "4", "DATASET.SUBSAMPLE_CLASSES", "base"]
    return run_train(data_root, tiny_clip_path, tiny_opts, trainer, "CoOp/vit_b16_ep50.yaml", output_dir, *flags,
                     opts=[*defaults, *opts], dataset=dataset)


@pytest.fixture(scope="module")
def base_run(data_root, tiny_clip_path, tiny_opts, tmp_path_factory):
    return train_once(tmp_path_factory, "coop", lambda out: run(data_root, tiny_clip_path, tiny_opts, out))


def test_training_writes_checkpoint_log_and_results(base_run):
    checkpoint = load_checkpoint(str(base_run / "prompt_learner" / "model.pth.tar-2"))
    assert set(checkpoint) >= {"state_dict", "epoch", "optimizer", "scheduler", "val_result"}
    assert checkpoint["epoch"] == 2 and list(checkpoint["state_dict"]) == ["ctx", "token_prefix", "token_suffix"]
    assert (base_run / "prompt_learner" / "checkpoint").read_text().strip() == "model.pth.tar-2"
    assert not (base_run / "prompt_learner" / "resume.pth.tar").exists()
    log = (base_run / "log.txt").read_text()
    tail = log[log.index("Finish training"):]
    assert "Deploy the last-epoch model" in tail and "=> result" in tail and "* accuracy:" in tail
    results = read_results(base_run)
    assert results["subsample"] == "base" and results["num_classes"] == 3 and results["total"] == 6
    assert f"* correct: {results['correct']}" in tail


@pytest.fixture(scope="module")
def selected_run(data_root, tiny_clip_path, tiny_opts, tmp_path_factory):
    """3 epochs, a checkpoint every 2, the epoch selected on val, per-class results."""
    out = tmp_path_factory.mktemp("coop") / "selected"
    run(data_root, tiny_clip_path, tiny_opts, out, opts=["OPTIM.MAX_EPOCH", "3", "TRAIN.CHECKPOINT_FREQ", "2",
                                                         "TEST.FINAL_MODEL", "best_val",
                                                         "TEST.PER_CLASS_RESULT", "True"])
    return out


def test_checkpoint_freq_adds_periodic_checkpoints(base_run, selected_run):
    assert checkpoint_epochs(str(base_run / "prompt_learner")) == [2]  # default 0: the last epoch only
    assert checkpoint_epochs(str(selected_run / "prompt_learner")) == [2, 3]  # every 2 epochs, and the last


def test_best_val_deploys_the_first_epoch_with_the_best_val_accuracy(selected_run):
    log = (selected_run / "log.txt").read_text()
    val_blocks = log.split("Evaluate on the *val* set")[1:]
    val_accuracies = [float(re.search(r"\* accuracy: ([\d.]+)%", block).group(1)) for block in val_blocks]
    assert len(val_accuracies) == 3  # after every epoch
    best = load_checkpoint(str(selected_run / "prompt_learner" / "model-best.pth.tar"))
    assert best["epoch"] == 1 + val_accuracies.index(max(val_accuracies))  # saved only on a strict improvement
    assert best["val_result"] == pytest.approx(max(val_accuracies), abs=0.005)
    tail = log[log.index("Finish training"):]
    assert "Deploy the model with the best val performance" in tail and "Evaluate on the *test* set" in tail
    results = read_results(selected_run)
    assert results["split"] == "test" and results["epoch"] == best["epoch"]
    assert results["selected_epoch"] == best["epoch"] and results["selected_on_test"] is False


def test_per_class_result_lists_each_class_and_their_mean(selected_run):
    log = (selected_run / "log.txt").read_text()
    final = log[log.index("Evaluate on the *test* set"):]
    rows = re.findall(r"\* class: (\d+) \((.*)\)\ttotal: (\d+)\tcorrect: (\d+)\tacc: ([\d.]+)%", final)
    assert [(label, name, total) for label, name, total, _, _ in rows] == [
        ("0", "face", "2"), ("1", "leopard", "2"), ("2", "motorbike", "2")]  # 2 test images per base class
    results = read_results(selected_run)
    assert sum(int(correct) for *_, correct, _ in rows) == results["correct"]
    mean = sum(float(acc) for *_, acc in rows) / len(rows)
    assert results["perclass_accuracy"] == pytest.approx(mean, abs=0.01)
    assert f"* average: {results['perclass_accuracy']:.2f}%" in final


def test_new_classes_evaluate_from_the_base_checkpoint(base_run, data_root, tiny_clip_path, tiny_opts, tmp_path):
    out = tmp_path / "test_new"
    run(data_root, tiny_clip_path, tiny_opts, out, "--eval-only", "--model-dir", str(base_run), "--load-epoch", "2",
        opts=["DATASET.SUBSAMPLE_CLASSES", "new"])
    results = read_results(out)
    assert results["subsample"] == "new" and results["num_classes"] == 2 and results["epoch"] == 2
    assert "* accuracy:" in (out / "log.txt").read_text()


def test_eval_only_reproduces_the_final_test(base_run, data_root, tiny_clip_path, tiny_opts, tmp_path):
    out = tmp_path / "test_base"
    run(data_root, tiny_clip_path, tiny_opts, out, "--eval-only", "--model-dir", str(base_run), "--load-epoch", "2")
    assert read_results(out)["correct"] == read_results(base_run)["correct"]
    assert read_results(out)["macro_f1"] == read_results(base_run)["macro_f1"]


def test_official_checkpoint_evaluates_like_ours(base_run, data_root, tiny_clip_path, tiny_opts, tmp_path):
    """A file as the official CoOp writes it (pickled Dassl scheduler, prefix/suffix buffers kept)
    loads by its key names and gives the same correct count and macro F1."""
    ours = load_checkpoint(str(base_run / "prompt_learner" / "model.pth.tar-2"))["state_dict"]
    official_dir = tmp_path / "official"
    (official_dir / "prompt_learner").mkdir(parents=True)
    make_official_style_checkpoint(official_dir / "prompt_learner" / "model.pth.tar-2", dict(ours), 2)
    out = tmp_path / "test_base"
    run(data_root, tiny_clip_path, tiny_opts, out, "--eval-only", "--model-dir", str(official_dir), "--load-epoch", "2")
    assert f'Loading weights to prompt_learner from "{official_dir / "prompt_learner" / "model.pth.tar-2"}"' \
        in (out / "log.txt").read_text()
    assert read_results(out)["correct"] == read_results(base_run)["correct"]
    assert read_results(out)["macro_f1"] == read_results(base_run)["macro_f1"]


def test_rerun_into_an_official_output_folder_retests(base_run, data_root, tiny_clip_path, tiny_opts, tmp_path):
    """The official file's pickled scheduler cannot be restored: the weights load, the schedule is
    stepped to its epoch, nothing is trained and the test repeats the official run's."""
    ours = load_checkpoint(str(base_run / "prompt_learner" / "model.pth.tar-2"))["state_dict"]
    official_dir = tmp_path / "official"
    (official_dir / "prompt_learner").mkdir(parents=True)
    make_official_style_checkpoint(official_dir / "prompt_learner" / "model.pth.tar-2", dict(ours), 2)
    run(data_root, tiny_clip_path, tiny_opts, official_dir)
    log = (official_dir / "log.txt").read_text()
    assert "Scheduler state not restorable" in log and "Previous epoch: 2" in log and "epoch [" not in log
    assert read_results(official_dir)["correct"] == read_results(base_run)["correct"]


def test_rerun_of_a_finished_run_only_retests(base_run, data_root, tiny_clip_path, tiny_opts):
    before = read_results(base_run)
    run(data_root, tiny_clip_path, tiny_opts, base_run)
    rerun_logs = glob.glob(str(base_run / "log.txt-*"))
    assert len(rerun_logs) == 1
    rerun_log = open(rerun_logs[0]).read()
    assert "Previous epoch: 2" in rerun_log and "epoch [" not in rerun_log
    assert read_results(base_run)["correct"] == before["correct"]


def test_interrupted_run_resumes_exactly(data_root, tiny_clip_path, tiny_opts, tmp_path, monkeypatch):
    uninterrupted = tmp_path / "full"
    run(data_root, tiny_clip_path, tiny_opts, uninterrupted, opts=["OPTIM.MAX_EPOCH", "3"])

    interrupted = tmp_path / "crashed"
    with killed_in_epoch(monkeypatch, 1):
        run(data_root, tiny_clip_path, tiny_opts, interrupted, opts=["OPTIM.MAX_EPOCH", "3"])
    assert (interrupted / "prompt_learner" / "resume.pth.tar").exists()
    run(data_root, tiny_clip_path, tiny_opts, interrupted, opts=["OPTIM.MAX_EPOCH", "3"])

    assert "Previous epoch: 1" in open(glob.glob(str(interrupted / "log.txt-*"))[0]).read()
    final = load_checkpoint(str(interrupted / "prompt_learner" / "model.pth.tar-3"))["state_dict"]["ctx"]
    expected = load_checkpoint(str(uninterrupted / "prompt_learner" / "model.pth.tar-3"))["state_dict"]["ctx"]
    assert torch.equal(final, expected)


def test_zero_shot_clip_base_and_new(data_root, tiny_clip_path, tiny_opts, tmp_path):
    for subsample, n_cls in (("base", 3), ("new", 2)):
        out = tmp_path / subsample
        run(data_root, tiny_clip_path, tiny_opts, out, "--eval-only", opts=["DATASET.SUBSAMPLE_CLASSES", subsample],
            trainer="ZeroshotCLIP")
        assert read_results(out)["num_classes"] == n_cls
        assert "Prompts: ['a photo of a " in (out / "log.txt").read_text()


# ---- clear errors for bad input -------------------------------------------------------

def test_unknown_trainer_and_dataset(data_root, tiny_clip_path, tiny_opts, tmp_path):
    with pytest.raises(KeyError, match="Did you mean 'CoOp'"):
        run(data_root, tiny_clip_path, tiny_opts, tmp_path / "a", trainer="COOP")
    with pytest.raises(KeyError, match="Unknown dataset 'Caltech'.*Caltech101"):
        run(data_root, tiny_clip_path, tiny_opts, tmp_path / "b", opts=["DATASET.NAME", "Caltech"])


def test_bad_config_key(data_root, tiny_clip_path, tiny_opts, tmp_path):
    with pytest.raises(KeyError, match="TRAINER.COOP.NCTX"):
        run(data_root, tiny_clip_path, tiny_opts, tmp_path, opts=["TRAINER.COOP.NCTX", "4"])


def test_missing_dataset_folder_names_path_and_fix(tiny_clip_path, tiny_opts, tmp_path):
    with pytest.raises(DatasetError, match=r"caltech-101.*prepare_data.py"):
        run(str(tmp_path / "empty_root"), tiny_clip_path, tiny_opts, tmp_path / "out")


def test_missing_split_file_names_it_and_the_fallback_input(tmp_path_factory, tiny_clip_path, tiny_opts, tmp_path):
    from tests.conftest import make_data_root

    root = make_data_root(tmp_path_factory, "OxfordPets")
    os.remove(os.path.join(root, "oxford_pets", "split_zhou_OxfordPets.json"))
    os.remove(os.path.join(root, "oxford_pets", "annotations", "trainval.txt"))
    with pytest.raises(DatasetError, match=r"(?s)split_zhou_OxfordPets.json.*How to get it.*trainval.txt"):
        run(root, tiny_clip_path, tiny_opts, tmp_path, dataset="oxford_pets")


def test_corrupt_image_names_the_file(tmp_path_factory, tiny_clip_path, tiny_opts, tmp_path):
    from tests.conftest import make_data_root

    root = make_data_root(tmp_path_factory, "Caltech101")
    with open(os.path.join(root, "caltech-101", "split_zhou_Caltech101.json")) as f:
        first_test_image = json.load(f)["test"][0][0]
    bad = os.path.join(root, "caltech-101", "101_ObjectCategories", first_test_image)
    with open(bad, "wb") as f:
        f.write(b"not a jpeg")
    with pytest.raises(DatasetError, match=rf"Cannot read image .*{os.path.basename(bad)}"):
        run(root, tiny_clip_path, tiny_opts, tmp_path, "--eval-only", trainer="ZeroshotCLIP")
