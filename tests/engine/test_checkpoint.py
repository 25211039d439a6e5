"""Checkpoint files: atomic layout, official files with pickled schedulers, refusal of code."""
import os
import pickle

import pytest
import torch

from engine.checkpoint import checkpoint_epochs, latest_checkpoint, load_checkpoint, save_checkpoint
from engine.errors import CheckpointError
from tests.helpers.official import make_official_style_checkpoint


def test_save_writes_pointer_and_loads_weights_only(tmp_path):
    path = save_checkpoint({"state_dict": {"ctx": torch.ones(2, 3)}, "epoch": 5}, str(tmp_path), 5)
    assert os.path.basename(path) == "model.pth.tar-5"
    assert latest_checkpoint(str(tmp_path)) == path
    assert checkpoint_epochs(str(tmp_path)) == [5]
    assert torch.equal(load_checkpoint(path)["state_dict"]["ctx"], torch.ones(2, 3))
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_official_file_with_pickled_scheduler_loads(tmp_path):
    path = tmp_path / "model.pth.tar-50"
    ctx = torch.randn(4, 8).half()
    make_official_style_checkpoint(path, {"ctx": ctx, "token_prefix": torch.zeros(3, 1, 8)}, 50)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # why the restricted loader exists
    checkpoint = load_checkpoint(str(path))
    assert checkpoint["epoch"] == 50
    assert torch.equal(checkpoint["state_dict"]["ctx"], ctx)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_file_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "model.pth.tar-1"
    torch.save({"state_dict": {}, "epoch": 1, "payload": _Exploit()}, path)
    with pytest.raises(pickle.UnpicklingError, match="Refusing to load"):
        load_checkpoint(str(path))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="Model not found"):
        load_checkpoint(str(tmp_path / "prompt_learner" / "model.pth.tar-3"))


def test_truncated_checkpoint_names_the_file(tmp_path):
    path = save_checkpoint({"state_dict": {"ctx": torch.ones(64, 64)}, "epoch": 5}, str(tmp_path), 5)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"Cannot read checkpoint {path} .*truncated"):
        load_checkpoint(path)


# A protocol-2 pickle whose first opcode (APPENDS) pops an empty stack: torch's unpickler raises a bare
# IndexError, as random bytes sometimes do.
STACK_UNDERFLOW_PICKLE = b"\x80\x02e."


def test_garbage_that_breaks_the_unpickler_is_an_unreadable_checkpoint(tmp_path):
    path = tmp_path / "model.pth.tar-1"
    path.write_bytes(STACK_UNDERFLOW_PICKLE)
    with pytest.raises(CheckpointError, match=r"Cannot read checkpoint .*IndexError"):
        load_checkpoint(str(path))


def test_torchscript_archive_as_checkpoint_is_refused_unopened(tmp_path):
    from tests.helpers.crafted import make_tiny_clip_archive

    target = tmp_path / "written_by_the_archive"
    path = make_tiny_clip_archive(tmp_path / "model.pth.tar-1", write_on_load=target)
    with pytest.raises(CheckpointError, match="TorchScript archive, not a checkpoint"):
        load_checkpoint(path)
    assert not target.exists()


def test_file_without_state_dict_is_not_a_checkpoint(tmp_path):
    torch.save({"ctx": torch.zeros(2)}, tmp_path / "model.pth.tar-1")
    with pytest.raises(CheckpointError, match="no 'state_dict'"):
        load_checkpoint(str(tmp_path / "model.pth.tar-1"))


def test_checkpoint_pointer_never_leaves_its_folder(tmp_path):
    (tmp_path / "run").mkdir()
    torch.save({"state_dict": {}, "epoch": 9}, tmp_path / "elsewhere.pth")
    (tmp_path / "run" / "checkpoint").write_text("../elsewhere.pth\n")
    assert latest_checkpoint(str(tmp_path / "run")) is None
