"""scripts/sweeps.py's argument checks, shared by the sweep scripts: each bad argument stops with the
script's message and exit status before any run starts (in-process; the runs themselves are tested end to
end in tests/cli/test_sweep.py, test_protocols.py and test_dpc_cli.py)."""
import pytest

from scripts import sweeps


@pytest.mark.parametrize("argv, status, message", [
    (["base2new", "CoOp", "dtd", "1", "DATASET.NUM_SHOTS", "4"], 2,
     "base2new.sh: DATASET.NUM_SHOTS is set by the script (use SHOTS=K for the shot count)"),
    (["fewshot", "CoOp", "dtd", "1", "1", "DATASET.SUBSAMPLE_CLASSES", "all"], 2,
     "fewshot.sh: DATASET.SUBSAMPLE_CLASSES is set by the script (give the shot counts as SHOTS)"),
    (["xd", "CoOp", "1", "DATASET.NUM_SHOTS", "4"], 2,
     "xd.sh: DATASET.NUM_SHOTS is set by the script (use SHOTS=K for the source's shots)"),
    (["base2new", "CoOp", "nodata", "1"], 2, "base2new.sh: unknown dataset 'nodata'"),
    (["base2new", "Coop", "dtd", "1"], 1, "base2new.sh: Unknown method 'Coop'. Did you mean 'CoOp'?"),
    (["fewshot", "MyMethod", "dtd", "1"], 2, "fewshot: No fewshot config for method 'MyMethod'"),
    (["xd", "CoOp", "1", "imagenet_b"], 2, "xd: Unknown target 'imagenet_b'"),
    (["sweep", "", "all", "1"], 2, "sweep.sh: no methods in ''"),
])
def test_bad_arguments_stop_before_any_run(tmp_path, monkeypatch, capsys, argv, status, message):
    monkeypatch.setenv("OUTPUT", str(tmp_path / "output"))
    assert sweeps.main(argv) == status
    assert message in capsys.readouterr().err
    assert not (tmp_path / "output").exists()


@pytest.mark.parametrize("phase_script", ["base2new", "xd"])
def test_an_unknown_phase_is_refused(tmp_path, monkeypatch, capsys, phase_script):
    monkeypatch.setenv("OUTPUT", str(tmp_path / "output"))
    monkeypatch.setenv("PHASE", "eval")
    argv = ["CoOp", "dtd", "1"] if phase_script == "base2new" else ["CoOp", "1"]
    assert sweeps.main([phase_script, *argv]) == 2
    assert f"{phase_script}.sh: PHASE must be both, train or test (got 'eval')" in capsys.readouterr().err
    assert not (tmp_path / "output").exists()


@pytest.mark.parametrize("command, argv", [("base2new", ["CoOp", "dtd"]), ("xd", ["CoOp"]), ("dpc", [])])
def test_too_few_arguments_print_the_scripts_usage(capsys, command, argv):
    with pytest.raises(SystemExit) as stop:
        sweeps.main([command, *argv])
    assert stop.value.code == 2
    usage = capsys.readouterr().out
    script = {"base2new": "scripts/base2new.sh", "xd": "scripts/xd.sh", "dpc": "scripts/dpc/base2new.sh"}[command]
    assert f"bash {script} " in usage and not usage.startswith("#!")
