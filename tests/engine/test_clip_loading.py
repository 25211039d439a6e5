"""CLIP files: TorchScript archives read without running their code, clear errors for bad files."""
import os
import warnings

import pytest
import torch

from engine.clip_loading import backbone_fingerprint, load_clip_to_cpu, read_torchscript_weights
from engine.errors import BackboneError, MissingFileError
from tests.helpers.crafted import RunsCommand, make_tiny_clip_archive, replace_archive_data


@pytest.fixture(scope="module")
def clip_archive(tmp_path_factory):
    return make_tiny_clip_archive(tmp_path_factory.mktemp("archive") / "tiny_jit.pt")


def test_archive_weights_equal_what_torchscript_loads(clip_archive, tiny_clip_path):
    weights = read_torchscript_weights(clip_archive)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = torch.jit.load(clip_archive).state_dict()  # our own benign archive: safe to run here
    assert list(weights) == list(expected)
    assert all(weights[k].dtype == expected[k].dtype and torch.equal(weights[k], expected[k]) for k in weights)
    # the archive and the state-dict file hold the same tiny CLIP (seed 0): they build the same model
    from_archive, from_state_dict = load_clip_to_cpu(clip_archive), load_clip_to_cpu(tiny_clip_path)
    for (name, a), (_, b) in zip(from_archive.state_dict().items(), from_state_dict.state_dict().items()):
        assert a.dtype == b.dtype and torch.equal(a, b), name


def test_archive_whose_code_writes_a_file_writes_nothing(tmp_path):
    target = tmp_path / "written_by_the_archive"
    archive = make_tiny_clip_archive(tmp_path / "crafted.pt", write_on_load=target)
    with pytest.raises(BackboneError, match=r"(?s)ln_final.payload.*custom state.*plain state dict"):
        load_clip_to_cpu(archive)
    assert not target.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(archive)  # what loading with torch.jit.load would have done
    assert target.exists()


def test_archive_with_a_pickle_payload_is_refused(clip_archive, tmp_path):
    target = tmp_path / "touched"
    crafted = replace_archive_data(clip_archive, tmp_path / "crafted.pt", RunsCommand(f"touch {target}"))
    with pytest.raises(BackboneError, match="Refusing to load .*system"):
        load_clip_to_cpu(crafted)
    assert not target.exists()


def test_state_dict_with_a_pickle_payload_is_refused(tmp_path):
    target = tmp_path / "touched"
    path = tmp_path / "clip.pt"
    torch.save({"positional_embedding": torch.zeros(1), "x": RunsCommand(f"touch {target}")}, path)
    with pytest.raises(BackboneError, match="Refusing to load .*could run code"):
        load_clip_to_cpu(str(path))
    assert not target.exists()


def test_garbage_and_non_clip_files_say_what_they_are_not(tmp_path, tiny_clip_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(256))
    with pytest.raises(BackboneError, match="Cannot read .*garbage.pt as a PyTorch file"):
        load_clip_to_cpu(str(garbage))
    prompt_checkpoint = tmp_path / "model.pth.tar-5"
    torch.save({"state_dict": {"ctx": torch.zeros(4, 8)}, "epoch": 5}, prompt_checkpoint)
    with pytest.raises(BackboneError, match=r"not a CLIP checkpoint.*'positional_embedding'.*--model-dir"):
        load_clip_to_cpu(str(prompt_checkpoint))
    # a ResNet-looking state dict that lacks the ResNet tower (the reference fails with a bare KeyError)
    partial = {k: v for k, v in torch.load(tiny_clip_path).items() if not k.startswith("visual.")}
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(BackboneError, match="not a complete OpenAI-format CLIP"):
        load_clip_to_cpu(str(tmp_path / "partial.pt"))
    underflow = tmp_path / "underflow.pt"  # torch's unpickler raises a bare IndexError on it
    underflow.write_bytes(b"\x80\x02e.")
    with pytest.raises(BackboneError, match="Cannot read .*underflow.pt as a PyTorch file"):
        load_clip_to_cpu(str(underflow))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(open(tiny_clip_path, "rb").read()[:5000])
    with pytest.raises(BackboneError, match="truncated"):
        load_clip_to_cpu(str(truncated))


def test_offline_download_says_where_weights_go(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # an empty ~/.cache/clip
    for proxy in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")  # nothing listens there: offline
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with pytest.raises(BackboneError, match=r"Cannot download CLIP 'ViT-B/16'.*\.cache/clip.*local"):
        load_clip_to_cpu("ViT-B/16")


def test_missing_backbone_path_names_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingFileError, match=f"relative path is taken from the working directory {tmp_path}"):
        load_clip_to_cpu("weights/clip.pt")


def test_fingerprint_follows_the_content_not_the_path(tmp_path, tiny_clip_path):
    copy = tmp_path / "copy.pt"
    copy.write_bytes(open(tiny_clip_path, "rb").read())
    assert backbone_fingerprint(str(copy))["sha256"] == backbone_fingerprint(tiny_clip_path)["sha256"]
    from tests.helpers.tiny_clip import make_tiny_clip
    other = make_tiny_clip(tmp_path / "other.pt", seed=1)
    assert backbone_fingerprint(other)["sha256"] != backbone_fingerprint(tiny_clip_path)["sha256"]
    assert backbone_fingerprint("ViT-B/16")["sha256"].startswith("5806e77c")
