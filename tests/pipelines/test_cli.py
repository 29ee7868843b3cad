"""The CLI as a user meets it: each mistake is one clear line and exit code 1, never a traceback."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from tests.conftest import venv_env, write_params

runner = CliRunner()


def invoke(*args: str):
    """The CLI run in-process. CliRunner catches any exception without printing it, so a crash is
    told from a clean exit by what it caught: nothing, or the SystemExit of a handled error."""
    result = runner.invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def test_the_installed_command_says_one_line_on_stderr(tmp_path):
    """The console script as a shell runs it: the error on stderr, one line, no traceback."""
    command = [str(Path(sys.executable).parent / "brainomaly"), "train", "--params",
               str(write_params(tmp_path, train={"epochs": -1}))]
    done = subprocess.run(command, env=venv_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    said = done.stderr.strip().splitlines()
    assert len(said) == 1 and said[0].startswith("brainomaly train:") and "train.epochs" in said[0], done.stderr


def test_bad_param_is_named(tmp_path):
    result = invoke("train", "--params", str(write_params(tmp_path, train={"epochs": -1})))
    assert result.exit_code == 1 and "train.epochs" in result.output


def test_missing_data_folder(tmp_path):
    params = write_params(tmp_path, data={"healthy_root": str(tmp_path / "no_data_here")})
    result = invoke("preprocess", "--params", str(params))
    assert result.exit_code == 1 and "folder not found" in result.output and "no_data_here" in result.output


def test_train_before_preprocess(tmp_path):
    result = invoke("train", "--params", str(write_params(tmp_path)))
    assert result.exit_code == 1 and "run `brainomaly preprocess` first" in result.output


def test_corrupt_nifti_is_named(tmp_path, phantom_roots):
    hcp = shutil.copytree(phantom_roots[0], tmp_path / "hcp")
    broken = sorted(hcp.glob("*/T1w/T2w_acpc_dc_restore_brain.nii.gz"))[0]
    broken.write_bytes(broken.read_bytes()[:3000])
    params = write_params(tmp_path, data={"healthy_root": str(hcp), "tumour_root": str(phantom_roots[1])},
                          preprocess={"on_error": "stop"})
    result = invoke("preprocess", "--params", str(params))
    assert result.exit_code == 1 and str(broken) in result.output and broken.parents[1].name in result.output


def test_validate_stops_on_corrupted_data_naming_the_subject(processed_project, phantom_roots, tmp_path):
    shutil.copytree(processed_project / "data", tmp_path / "data")
    shard = sorted((tmp_path / "data" / "processed" / "shards" / "brats").glob("*.npz"))[0]
    arrays = dict(np.load(shard))
    arrays["images"][2, 0, 0, 0] = np.inf
    np.savez_compressed(shard, **arrays)
    roots = {"healthy_root": str(phantom_roots[0]), "tumour_root": str(phantom_roots[1])}
    result = invoke("validate", "--params", str(write_params(tmp_path, data=roots)))
    assert result.exit_code == 1
    assert "data validation failed" in result.output and shard.stem in result.output
    assert (tmp_path / "reports" / "validation.json").is_file() and (tmp_path / "reports" / "validation.md").is_file()


def test_serve_without_a_registered_model(tmp_path):
    result = invoke("serve", "--params", str(write_params(tmp_path)))
    assert result.exit_code == 1 and "run `brainomaly register` first" in result.output


def test_serve_pinned_to_a_version_that_does_not_exist(tmp_path):
    result = invoke("serve", "--params", str(write_params(tmp_path, serve={"model_version": 7})))
    assert result.exit_code == 1 and "'brainomaly-detector' has no version 7" in result.output


@pytest.mark.parametrize("command", ["phantoms", "preprocess", "validate", "train", "evaluate", "register", "serve", "drift-demo"])
def test_every_stage_has_help(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0 and "--params" in result.output


def test_drift_demo_names_what_is_missing(tmp_path):
    result = invoke("drift-demo", "--params", str(write_params(tmp_path)))
    assert result.exit_code == 1 and "run `brainomaly preprocess` first" in result.output
    result = invoke("drift-demo", "--params", str(write_params(tmp_path)), "--shift", "sepia")
    assert result.exit_code == 1 and "unknown shift 'sepia'" in result.output


def test_oneclass_names_a_bad_npz(tmp_path):
    np.savez(tmp_path / "one_class.npz", images=np.zeros((5, 8, 8)), labels=np.zeros(5))
    result = invoke("oneclass", "--params", str(write_params(tmp_path)), "--data", str(tmp_path / "one_class.npz"))
    assert result.exit_code == 1 and "at least two classes" in result.output


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "scanner-gateway.local"])
def test_serve_refuses_a_reachable_address_without_a_key(tmp_path, monkeypatch, host):
    monkeypatch.delenv("BRAINOMALY_API_KEY", raising=False)
    result = invoke("serve", "--params", str(write_params(tmp_path, serve={"host": host})))
    assert result.exit_code == 1 and "BRAINOMALY_API_KEY" in result.output and "--allow-no-key" in result.output


def test_a_route_prefix_must_be_a_path(tmp_path):
    result = invoke("serve", "--params", str(write_params(tmp_path, serve={"route_prefix": "brainomaly; rm"})))
    assert result.exit_code == 1 and "serve.route_prefix" in result.output
