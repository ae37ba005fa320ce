"""`azureml.core.model.Model.get_model_path()` for legacy scripts, and the import hook that provides it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scoring import config
from scoring.legacy import Model, ModelNotFoundException
from tests.conftest import REPO


def make_model(root: Path, name: str, version: str, *files: str) -> Path:
    folder = root / name / version
    folder.mkdir(parents=True)
    for file in files:
        (folder / file).write_text(file)
    return folder


@pytest.fixture
def model_dir(monkeypatch, tmp_path: Path):
    def point_at(path: Path) -> None:
        monkeypatch.setenv(config.MODEL_DIR, str(path))

    monkeypatch.chdir(tmp_path)
    return point_at


def test_it_finds_the_one_model_of_a_single_model_service(model_dir, tmp_path: Path) -> None:
    version_folder = make_model(tmp_path / "azureml-models-x", "best_model", "3", "model.pkl")
    model_dir(version_folder)  # Azure ML set AZUREML_MODEL_DIR to <root>/<name>/<version> for one model

    assert Model.get_model_path("best_model") == str(version_folder / "model.pkl")


def test_it_takes_the_latest_version_of_a_multi_model_root(model_dir, tmp_path: Path) -> None:
    root = tmp_path / "models"
    for version in ("2", "10", "9"):
        make_model(root, "clf", version, "clf.onnx")
    make_model(root, "scaler", "1", "a.json", "b.json")
    model_dir(root)

    assert Model.get_model_path("clf") == str(root / "clf" / "10" / "clf.onnx")
    assert Model.get_model_path("clf", version=2) == str(root / "clf" / "2" / "clf.onnx")
    # Several files: the version folder itself (the SDK refused these).
    assert Model.get_model_path("scaler") == str(root / "scaler" / "1")


def test_it_takes_a_flat_model_directory_as_the_model(model_dir, tmp_path: Path) -> None:
    flat = tmp_path / "sample_model"
    flat.mkdir()
    (flat / "model.npz").write_bytes(b"npz")
    model_dir(flat)

    assert Model.get_model_path("any-name") == str(flat / "model.npz")


def test_it_reads_the_legacy_cache_folder_without_a_model_dir(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv(config.MODEL_DIR, raising=False)
    monkeypatch.chdir(tmp_path)
    make_model(tmp_path / "azureml-models", "m", "1", "m.bin")

    assert Model.get_model_path("m") == str(Path("azureml-models") / "m" / "1" / "m.bin")


def test_it_says_where_it_looked_for_a_missing_model(model_dir, tmp_path: Path) -> None:
    root = tmp_path / "models"
    make_model(root, "clf", "1", "clf.onnx")
    model_dir(root)

    with pytest.raises(ModelNotFoundException, match=r"model clf version 7 not found in .*models"):
        Model.get_model_path("clf", version=7)
    with pytest.raises(ModelNotFoundException, match="model other not found"):
        Model.get_model_path("other")


def test_it_explains_that_only_get_model_path_is_available() -> None:
    with pytest.raises(NotImplementedError, match=r"only Model\.get_model_path"):
        Model("workspace", "name")


def run_python(program: str, *paths: Path) -> str:
    env_path = ":".join(str(p) for p in (*paths, REPO, REPO / "collector" / "src"))
    result = subprocess.run(
        [sys.executable, "-c", program],
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_it_makes_azureml_core_importable_beside_azureml_monitoring() -> None:
    program = """
import scoring.legacy
scoring.legacy.install()
from azureml.core.model import Model
from azureml.core import Model as Same
from azureml.monitoring import ModelDataCollector
print(Model is Same is scoring.legacy.Model, ModelDataCollector.__module__)
"""
    assert run_python(program) == "True collector"


def test_it_never_shadows_a_real_azureml_core(tmp_path: Path) -> None:
    # A stand-in for the real azureml-core distribution: another portion of the `azureml` namespace.
    real = tmp_path / "site" / "azureml" / "core"
    real.mkdir(parents=True)
    (real / "__init__.py").write_text("REAL = True\n")
    (real / "model.py").write_text("class Model:\n    real = True\n")
    program = """
import scoring.legacy
scoring.legacy.install()
from azureml.core.model import Model
from azureml.monitoring import ModelDataCollector
print(getattr(Model, "real", False))
"""
    assert run_python(program, tmp_path / "site") == "True"
