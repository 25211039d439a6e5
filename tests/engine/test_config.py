"""Config merge order, yacs strictness, clear errors for bad keys and names; every shipped config merges."""
import glob
import os

import pytest

import trainers  # noqa: F401  (registers TRAINER.<M> hooks)
from engine.config import KEY_ALIASES, add_key_aliases, build_cfg, merge_from_file, merge_from_list, setup_cfg
from engine.errors import ConfigError
from engine.registry import DATASETS, Registry, TRAINERS
from tests.conftest import REPO
from train import build_parser

CONFIGS = os.path.join(REPO, "configs")
SHIPPED_CONFIGS = sorted(glob.glob(os.path.join(CONFIGS, "**", "*.yaml"), recursive=True)
                         + glob.glob(os.path.join(REPO, "examples", "*.yaml")))


def args_for(argv):
    return build_parser().parse_args(argv)


def test_merge_order_dataset_then_method_then_flags_then_opts(tmp_path):
    dataset_yaml = tmp_path / "d.yaml"
    dataset_yaml.write_text("DATASET:\n  NAME: Caltech101\nOPTIM:\n  LR: 0.5\n")
    method_yaml = tmp_path / "m.yaml"
    method_yaml.write_text("OPTIM:\n  LR: 0.25\n  MAX_EPOCH: 7\nMODEL:\n  BACKBONE:\n    NAME: ViT-B/16\n")
    cfg = setup_cfg(args_for([
        "--dataset-config-file", str(dataset_yaml), "--config-file", str(method_yaml),
        "--backbone", "RN50", "--seed", "3", "--trainer", "CoOp", "OPTIM.MAX_EPOCH", "9"]))
    assert cfg.DATASET.NAME == "Caltech101"
    assert cfg.OPTIM.LR == 0.25            # method YAML after dataset YAML
    assert cfg.MODEL.BACKBONE.NAME == "RN50"  # flag after YAML
    assert cfg.OPTIM.MAX_EPOCH == 9        # opts last
    assert cfg.SEED == 3 and cfg.TRAINER.NAME == "CoOp"
    assert cfg.is_frozen()


def test_seed_zero_is_honoured():
    assert setup_cfg(args_for(["--seed", "0"])).SEED == 0
    assert setup_cfg(args_for([])).SEED == -1


def test_every_trainer_node_exists_before_yaml():
    cfg = build_cfg()
    assert cfg.TRAINER.COOP.N_CTX == 16 and cfg.TRAINER.COOP.PREC == "fp16"


def test_unknown_key_names_source_and_suggests(tmp_path):
    cfg = build_cfg()
    with pytest.raises(KeyError, match=r"OPTIM.MAX_EPOHC.*command line.*OPTIM.MAX_EPOCH"):
        merge_from_list(cfg, ["OPTIM.MAX_EPOHC", "3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("TRAINER:\n  COOP:\n    NCTX: 4\n")
    with pytest.raises(KeyError, match=r"TRAINER.COOP.NCTX.*bad.yaml.*N_CTX"):
        merge_from_file(cfg, str(bad))


def test_yacs_type_check_rejects_int_for_float():
    cfg = build_cfg()
    with pytest.raises(ValueError, match="decimal point"):
        merge_from_list(cfg, ["OPTIM.LR", "1"])
    merge_from_list(cfg, ["OPTIM.LR", "1.0", "INPUT.SIZE", "(32, 32)"])
    assert cfg.OPTIM.LR == 1.0 and tuple(cfg.INPUT.SIZE) == (32, 32)


def test_odd_number_of_opts():
    with pytest.raises(ValueError, match="KEY VALUE"):
        merge_from_list(build_cfg(), ["OPTIM.LR"])


def test_key_aliases_map_official_names(tmp_path):
    add_key_aliases({"LEGACY.MAX": "OPTIM.MAX_EPOCH"})
    try:
        cfg = build_cfg()
        merge_from_list(cfg, ["LEGACY.MAX", "3"])
        legacy = tmp_path / "legacy.yaml"
        legacy.write_text("LEGACY:\n  MAX: 4\n")
        assert cfg.OPTIM.MAX_EPOCH == 3
        merge_from_file(cfg, str(legacy))
        assert cfg.OPTIM.MAX_EPOCH == 4
    finally:
        KEY_ALIASES.pop("LEGACY.MAX")


def test_registry_unknown_name_suggests_closest():
    with pytest.raises(KeyError, match=r"Unknown trainer 'Coop'.*Did you mean 'CoOp'"):
        TRAINERS.get("Coop")
    registry = Registry("thing")
    registry.register("A", aliases=("B",))(object)
    assert registry.get("B") is object
    with pytest.raises(KeyError, match="registered twice"):
        registry.register("A")(int)


def test_every_config_folder_is_walked():
    folders = {os.path.relpath(os.path.dirname(p), REPO) for p in SHIPPED_CONFIGS}
    assert {"configs/datasets", "configs/trainers/CoOp", "configs/trainers/DPC/CoOp", "configs/trainers/DPC/PromptKD",
            "examples"} <= folders


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: os.path.relpath(p, REPO))
def test_every_shipped_config_merges(path, request):
    """Into the defaults with every trainer's node (the example's too): an unknown key or a bad value fails."""
    if os.path.relpath(path, REPO).startswith("examples"):
        request.getfixturevalue("example_trainer")  # its TRAINER.MYMETHOD node
    cfg = build_cfg()
    merge_from_file(cfg, path)
    if os.path.dirname(path) == os.path.join(CONFIGS, "datasets"):
        assert cfg.DATASET.NAME in DATASETS
        return
    assert cfg.OPTIM.NAME == "sgd" and cfg.OPTIM.LR_SCHEDULER == "cosine" and cfg.OPTIM.WARMUP_CONS_LR == 1e-5
    assert tuple(cfg.INPUT.TRANSFORMS) == ("random_resized_crop", "random_flip", "normalize")


# ---- Dassl keys accepted but never read, and the refused MODEL.INIT_WEIGHTS -----------------------

def test_unread_dassl_keys_load_and_warn_once_when_set(tmp_path, capsys):
    yaml_file = tmp_path / "dassl.yaml"
    yaml_file.write_text("OPTIM:\n  STAGED_LR: True\n")  # and again on the command line: one warning
    cfg = setup_cfg(args_for(["--config-file", str(yaml_file), "--head", "mlp", "OPTIM.STAGED_LR", "True",
                              "TEST.COMPUTE_CMAT", "True", "DATALOADER.K_TRANSFORMS", "2"]))
    assert cfg.OPTIM.STAGED_LR and cfg.TEST.COMPUTE_CMAT and cfg.MODEL.HEAD.NAME == "mlp"
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Warning:")]
    assert warnings == [f"Warning: {key} has no effect here (a Dassl key, accepted so that official configs and "
                        "scripts load)" for key in ("DATALOADER.K_TRANSFORMS 2", "MODEL.HEAD.NAME 'mlp'", "OPTIM.STAGED_LR True",
                                                   "TEST.COMPUTE_CMAT True")]
    defaults_written_out = tmp_path / "defaults.yaml"
    defaults_written_out.write_text("VERSION: 1\nOPTIM:\n  NEW_LAYERS: []\nTEST:\n  EVALUATOR: Classification\n")
    setup_cfg(args_for(["--config-file", str(defaults_written_out)]))
    assert "Warning" not in capsys.readouterr().out


def test_init_weights_is_refused_with_what_to_use_instead(tmp_path):
    assert setup_cfg(args_for(["MODEL.INIT_WEIGHTS", ""])).MODEL.INIT_WEIGHTS == ""
    with pytest.raises(ConfigError, match=r"MODEL.INIT_WEIGHTS \(w.pth\) is not supported.*--model-dir.*--resume"):
        setup_cfg(args_for(["MODEL.INIT_WEIGHTS", "w.pth"]))
