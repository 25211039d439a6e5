"""Runs that cannot go silently wrong, and errors a user can act on (train.py and launch.py)."""
import fcntl
import json
import os
import subprocess
import sys
import threading
import time

import pytest
import train
from engine.errors import CheckpointError, ConfigError, MissingFileError, OutputDirError, UnknownNameError
from engine.run_folder import LOCK_FILE
from engine.trainer import TrainerBase
from tests.helpers.cli import REPO, read_results, run_train, train_once

COOP_OPTS = ["OPTIM.MAX_EPOCH", "2", "TRAINER.COOP.N_CTX", "4", "DATASET.SUBSAMPLE_CLASSES", "base"]


def coop(data_root, tiny_clip_path, tiny_opts, output_dir, *flags, opts=()):
    return run_train(data_root, tiny_clip_path, tiny_opts, "CoOp", "CoOp/vit_b16_ep50.yaml", output_dir, *flags,
                     opts=[*COOP_OPTS, *opts])


def coop_argv(data_root, tiny_clip_path, tiny_opts, output_dir, *flags, opts=()):
    """The command line `coop` runs, for `train.cli` and subprocesses."""
    return ["--root", data_root, "--seed", "1", "--trainer", "CoOp", "--backbone", tiny_clip_path,
            "--dataset-config-file", os.path.join(REPO, "configs", "datasets", "caltech101.yaml"),
            "--config-file", os.path.join(REPO, "configs", "trainers", "CoOp", "vit_b16_ep50.yaml"),
            "--output-dir", str(output_dir), *flags, *tiny_opts, "DATASET.NUM_SHOTS", "2", *COOP_OPTS, *opts]


@pytest.fixture(scope="module")
def coop_run(data_root, tiny_clip_path, tiny_opts, tmp_path_factory):
    return train_once(tmp_path_factory, "safety", lambda out: coop(data_root, tiny_clip_path, tiny_opts, out))


def snapshot(folder):
    return {name: (folder / name).read_bytes() for name in ("config.yaml", "results.json")}


# ---- checkpoints that do not fit -------------------------------------------------------

def test_checkpoint_of_another_method_is_refused(data_root, tiny_clip_path, tiny_opts, tmp_path):
    """A DPL run evaluated as CoOp: its prompt_learner/ has no `ctx`, which used to stay random."""
    dpl = tmp_path / "dpl"
    run_train(data_root, tiny_clip_path, tiny_opts, "DPL", "DPL/vit_b16_c2_ep5_batch4_4+4ctx.yaml", dpl,
              opts=["OPTIM.MAX_EPOCH", "1", "DATASET.SUBSAMPLE_CLASSES", "base", "TRAINER.DPL.DEPTH_V", "2",
                    "TRAINER.DPL.DEPTH_T", "2"])
    out = tmp_path / "coop_eval"
    checkpoint = dpl / "prompt_learner" / "model.pth.tar-1"
    with pytest.raises(CheckpointError, match=rf"{checkpoint} does not fit CoOp: it has no \['ctx'\]\. "
                                              rf"It was written by DPL \(per {dpl / 'config.yaml'}\)"):
        coop(data_root, tiny_clip_path, tiny_opts, out, "--eval-only", "--model-dir", str(dpl), "--load-epoch", "1")
    assert not (out / "results.json").exists() and not (out / "config.yaml").exists()


def test_eval_only_needs_a_model_dir_unless_nothing_is_trained(data_root, tiny_clip_path, tiny_opts, tmp_path):
    with pytest.raises(ConfigError, match="--eval-only without --model-dir would evaluate CoOp's untrained prompts"):
        coop(data_root, tiny_clip_path, tiny_opts, tmp_path / "coop", "--eval-only")
    assert not (tmp_path / "coop").exists()
    run_train(data_root, tiny_clip_path, tiny_opts, "ZeroshotCLIP", "CoOp/vit_b16.yaml", tmp_path / "zs",
              "--eval-only", opts=["DATASET.SUBSAMPLE_CLASSES", "base"])
    assert read_results(tmp_path / "zs")["num_classes"] == 3


def test_load_epoch_that_does_not_exist_lists_the_saved_ones(coop_run, data_root, tiny_clip_path, tiny_opts,
                                                             tmp_path):
    with pytest.raises(MissingFileError, match=r"--load-epoch 7\): the epochs saved in .*prompt_learner are 2$"):
        coop(data_root, tiny_clip_path, tiny_opts, tmp_path / "eval", "--eval-only", "--model-dir", str(coop_run),
             "--load-epoch", "7")


def test_truncated_checkpoint_names_the_file(coop_run, data_root, tiny_clip_path, tiny_opts, tmp_path):
    broken = tmp_path / "broken"
    (broken / "prompt_learner").mkdir(parents=True)
    data = (coop_run / "prompt_learner" / "model.pth.tar-2").read_bytes()
    (broken / "prompt_learner" / "model.pth.tar-2").write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"Cannot read checkpoint {broken}/prompt_learner/model.pth.tar-2"):
        coop(data_root, tiny_clip_path, tiny_opts, tmp_path / "eval", "--eval-only", "--model-dir", str(broken),
             "--load-epoch", "2")


def test_checkpoints_record_their_backbone(coop_run, tiny_clip_path):
    from engine.checkpoint import load_checkpoint
    from engine.clip_loading import backbone_fingerprint

    recorded = load_checkpoint(str(coop_run / "prompt_learner" / "model.pth.tar-2"))["backbone"]
    assert recorded == backbone_fingerprint(tiny_clip_path)


# ---- one folder, one configuration, one process -----------------------------------------

def test_rerun_with_another_config_is_refused_listing_the_keys(coop_run, data_root, tiny_clip_path, tiny_opts):
    before = snapshot(coop_run)
    with pytest.raises(OutputDirError, match=r"(?s)another configuration.*SEED: 1 in the folder, 2 now"
                                             r".*OPTIM.LR: 0.002 in the folder, 0.5 now.*--allow-config-change"):
        coop(data_root, tiny_clip_path, tiny_opts, coop_run, "--seed", "2", opts=["OPTIM.LR", "0.5"])
    with pytest.raises(OutputDirError, match="DATASET.SUBSAMPLE_CLASSES: 'base' in the folder, 'new' now"):
        coop(data_root, tiny_clip_path, tiny_opts, coop_run, "--eval-only", "--model-dir", str(coop_run),
             opts=["DATASET.SUBSAMPLE_CLASSES", "new"])
    assert snapshot(coop_run) == before
    # where things are and how fast they load may change
    coop(data_root, tiny_clip_path, tiny_opts, coop_run, opts=["TRAIN.PRINT_FREQ", "1"])
    assert read_results(coop_run)["correct"] == json.loads(before["results.json"])["correct"]


def test_allow_config_change_runs_and_records_the_new_config(data_root, tiny_clip_path, tiny_opts, tmp_path):
    out = tmp_path / "coop"
    coop(data_root, tiny_clip_path, tiny_opts, out, opts=["OPTIM.MAX_EPOCH", "1"])
    coop(data_root, tiny_clip_path, tiny_opts, out, "--allow-config-change", opts=["TEST.PER_CLASS_RESULT", "True"])
    assert "PER_CLASS_RESULT: true" in (out / "config.yaml").read_text()


def test_failed_run_writes_no_config(data_root, tiny_clip_path, tiny_opts, tmp_path):
    out = tmp_path / "coop"
    with pytest.raises(ConfigError, match="INPUT.SIZE"):
        coop(data_root, tiny_clip_path, tiny_opts, out, opts=["INPUT.SIZE", "(64, 64)"])
    assert not (out / "config.yaml").exists()


def test_train_py_holds_a_lock_and_a_second_run_waits(coop_run, data_root, tiny_clip_path, tiny_opts, monkeypatch,
                                                      capsys):
    seen = []
    original = TrainerBase.test

    def probe_lock(self, *args, **kwargs):
        with open(coop_run / LOCK_FILE) as other:
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen.append("free")
            except BlockingIOError:
                seen.append("held")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TrainerBase, "test", probe_lock)
    holder = open(coop_run / LOCK_FILE, "a")
    fcntl.flock(holder, fcntl.LOCK_EX)
    release = threading.Timer(1.0, holder.close)
    release.start()
    started = time.monotonic()
    coop(data_root, tiny_clip_path, tiny_opts, coop_run)  # a finished run: waits, then only re-tests
    release.join()
    assert time.monotonic() - started >= 1.0
    assert "is in use by" in capsys.readouterr().err
    assert seen == ["held"]


def test_stale_temp_files_are_removed_on_start(coop_run, data_root, tiny_clip_path, tiny_opts):
    stale = [coop_run / ".tmp-abc123results.json", coop_run / "prompt_learner" / ".tmp-def456model.pth.tar-2"]
    for path in stale:
        path.write_bytes(b"half a file")
    coop(data_root, tiny_clip_path, tiny_opts, coop_run)
    assert not any(path.exists() for path in stale)


def test_log_of_a_killed_process_keeps_its_lines(tmp_path):
    code = ("import os, signal; from engine.logger import setup_logger; setup_logger(%r); "
            "print('epoch [1/5] batch [1/2] loss 1.0'); os.kill(os.getpid(), signal.SIGKILL)") % str(tmp_path)
    subprocess.run([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.DEVNULL)
    assert (tmp_path / "log.txt").read_text() == "epoch [1/5] batch [1/2] loss 1.0\n"


# ---- messages --------------------------------------------------------------------------

def test_config_value_hints_follow_the_key_type(data_root, tiny_clip_path, tiny_opts, tmp_path):
    with pytest.raises(ConfigError, match=r"'2\.5' for OPTIM.MAX_EPOCH: it is an integer"):
        coop(data_root, tiny_clip_path, tiny_opts, tmp_path, opts=["OPTIM.MAX_EPOCH", "2.5"])
    with pytest.raises(ConfigError, match=r"'1' for OPTIM.LR: it is a float: write it with a decimal point"):
        coop(data_root, tiny_clip_path, tiny_opts, tmp_path, opts=["OPTIM.LR", "1"])


def test_unknown_key_of_an_out_of_tree_method_suggests_trainer_module(data_root, tiny_clip_path, tiny_opts,
                                                                      tmp_path):
    with pytest.raises(UnknownNameError, match=r"TRAINER.MYMETHOD.N_CTX.*--trainer-module"):
        coop(data_root, tiny_clip_path, tiny_opts, tmp_path, opts=["TRAINER.MYMETHOD.N_CTX", "4"])
    with pytest.raises(UnknownNameError, match=r"Unknown trainer 'MyMethod'.*--trainer-module"):
        run_train(data_root, tiny_clip_path, tiny_opts, "MyMethod", "CoOp/vit_b16.yaml", tmp_path)


def test_relative_config_path_names_the_working_directory(data_root, tiny_clip_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingFileError, match=rf"configs/trainers/CoOp/vit_b16.yaml \(relative to the working "
                                               rf"directory {tmp_path}\); did you mean {REPO}/configs"):
        train.main(["--root", data_root, "--trainer", "CoOp", "--backbone", tiny_clip_path,
                    "--config-file", "configs/trainers/CoOp/vit_b16.yaml", "--output-dir", "out"])


def test_unwritable_output_folder_is_a_clear_error(data_root, tiny_clip_path, tiny_opts, tmp_path):
    (tmp_path / "file").write_text("")  # a file where a folder should be: as unwritable as it gets for root
    with pytest.raises(OutputDirError, match=r"Cannot write to the output folder .*file/run .*writable --output-dir"):
        coop(data_root, tiny_clip_path, tiny_opts, tmp_path / "file" / "run")


def test_cli_prints_user_errors_without_traceback(data_root, tiny_clip_path, tiny_opts, tmp_path, capsys,
                                                   monkeypatch):
    assert train.cli(coop_argv(data_root, tiny_clip_path, tiny_opts, tmp_path, "--eval-only")) == 1
    err = capsys.readouterr().err
    assert err.startswith("train.py: error: --eval-only without --model-dir") and "Traceback" not in err
    with pytest.raises(ConfigError):
        train.cli(coop_argv(data_root, tiny_clip_path, tiny_opts, tmp_path, "--eval-only", "--debug"))
    monkeypatch.setenv("TRAIN_DEBUG", "1")
    with pytest.raises(ConfigError):
        train.cli(coop_argv(data_root, tiny_clip_path, tiny_opts, tmp_path, "--eval-only"))


def test_command_line_exit_codes_and_tracebacks(data_root, tiny_clip_path, tiny_opts, tmp_path):
    """In a real process: a user error is one message and exit 1; an unexpected error (a bug in an
    out-of-tree trainer) keeps its traceback."""
    bad = coop_argv(data_root, tiny_clip_path, tiny_opts, tmp_path / "a", opts=["OPTIM.LR", "1"])

    def run(argv):
        return subprocess.run([sys.executable, "train.py", *argv], cwd=REPO, capture_output=True, text=True)

    user = run(bad)
    assert user.returncode == 1 and "Traceback" not in user.stderr
    assert user.stderr.splitlines()[0].startswith("train.py: error: Bad command-line value '1' for OPTIM.LR")
    module = tmp_path / "buggy.py"
    module.write_text("from engine.registry import TRAINERS\nfrom trainers.coop import CoOp\n\n"
                      "@TRAINERS.register('Buggy')\nclass Buggy(CoOp):\n"
                      "    def build_model(self, clip_model, classnames):\n        return {}['no such key']\n")
    bug = run(coop_argv(data_root, tiny_clip_path, tiny_opts, tmp_path / "b", "--trainer-module", str(module),
                        "--trainer", "Buggy"))
    assert bug.returncode == 1 and "Traceback" in bug.stderr and "KeyError: 'no such key'" in bug.stderr


def test_help_answers_without_importing_torch():
    code = ("import runpy, sys\nsys.argv = ['train.py', '--help']\ntry:\n    runpy.run_path('train.py', "
            "run_name='__main__')\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True).stdout
    assert "--allow-config-change" in out and out.strip().endswith("False")


def test_launch_suggests_method_names_and_keeps_sbatch_lines_whole(tmp_path, capsys):
    from scripts import launch

    with pytest.raises(SystemExit, match="Unknown method 'Coop'. Did you mean 'CoOp'"):
        launch.main(["Coop", "caltech101", "1", "--dry-run", "--output", str(tmp_path)])
    with pytest.raises(SystemExit, match="Unknown dataset 'caltech'. Did you mean 'caltech101'"):
        launch.main(["CoOp", "caltech", "1", "--dry-run", "--output", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        launch.main(["CoOp", "caltech101", "1", "--slurm", "--dry-run", "--output", str(tmp_path),
                     "--partition", "gpu\n#SBATCH --wrap=touch /tmp/x"])
    assert exit_info.value.code == 2 and "line breaks are not allowed" in capsys.readouterr().err
    assert not (tmp_path / "slurm").exists()

