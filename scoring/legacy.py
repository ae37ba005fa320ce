"""`from azureml.core.model import Model` for unchanged legacy scripts, when the real azureml-core is absent.

Inside a scoring service, a v1 script uses one thing of azureml-core: `Model.get_model_path(name)`, to find its
model's files. This module provides that, and `install()` makes `azureml.core` and `azureml.core.model` importable
through a finder placed at the END of `sys.meta_path`: Python consults it only after every ordinary finder has
failed, so an environment with the real azureml-core installed keeps using the real one, untouched.

The model directory follows the legacy layout (see scoring/README.md): `AZUREML_MODEL_DIR` names either one
model's version folder, `<root>/<name>/<version>` (one model), or the root holding `<name>/<version>/` folders
(several models), as Azure ML set it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Any

from scoring import config

MODELS_DIR = "azureml-models"  # the legacy cache folder, relative to the working directory


class ModelNotFoundException(Exception):
    """No model of that name (and version) in the model directory."""


class Model:
    """The part of `azureml.core.model.Model` a scoring script uses inside a service: `get_model_path()`.

    Registering, downloading or listing models needs a workspace and the real SDK: those raise a clear error.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "only Model.get_model_path() is available inside the Tributary scoring runtime; install azureml-core "
            "to use Model(workspace, name)"
        )

    @staticmethod
    def get_model_path(model_name: str, version: int | str | None = None, _workspace: Any = None) -> str:
        """The path of model `model_name` (its latest version unless `version` is given), as the v1 SDK gave it.

        Looks in the model directory (`AZUREML_MODEL_DIR`), then in `./azureml-models`, then for `./<model_name>`.
        Like the SDK, when a version folder holds exactly one file or folder, that entry is the path; a version
        folder with several entries is returned itself (the SDK refused those). A model directory of plain files
        (no sub-folders) is taken as the one model's folder, whatever its name.
        """
        if not model_name:
            raise ModelNotFoundException("model_name is empty")
        roots = _roots(model_name)
        for root in roots:
            found = _in_root(root, model_name, version)
            if found is not None:
                return str(found)
        flat = _flat_model_dir()
        if flat is not None and version is None:
            return str(flat)
        if version is None and Path(model_name).exists():
            return model_name
        where = ", ".join(str(r) for r in roots) or f"{config.MODEL_DIR} (not set)"
        wanted = f"{model_name} version {version}" if version is not None else model_name
        raise ModelNotFoundException(f"model {wanted} not found in {where} or in {os.getcwd()}")


def _roots(model_name: str) -> list[Path]:
    """Folders that may hold `<model_name>/<version>/`: the model root, derived from AZUREML_MODEL_DIR."""
    roots: list[Path] = []
    model_dir = os.environ.get(config.MODEL_DIR, "").strip()
    if model_dir:
        given = Path(model_dir)
        roots.append(given)
        # One model: AZUREML_MODEL_DIR is <root>/<name>/<version>, so the root is two levels up.
        if given.parent.name == model_name:
            roots.append(given.parent.parent)
    roots.append(Path(MODELS_DIR))
    return roots


def _flat_model_dir() -> Path | None:
    """A model directory of plain files (no `<name>/<version>/` folders): one model, given as it is."""
    model_dir = os.environ.get(config.MODEL_DIR, "").strip()
    if not model_dir or not Path(model_dir).is_dir():
        return None
    entries = [p for p in Path(model_dir).iterdir() if not p.name.startswith(".")]
    if not entries or any(p.is_dir() for p in entries):
        return None
    return entries[0] if len(entries) == 1 else Path(model_dir)


def _in_root(root: Path, model_name: str, version: int | str | None) -> Path | None:
    candidate = root / model_name
    if candidate.is_file():
        # A flat model directory: the model was registered as this very file.
        return candidate if version is None else None
    if not candidate.is_dir():
        return None
    if version is None:
        versions = [p for p in candidate.iterdir() if p.is_dir()]
        if not versions:
            return None
        folder = max(versions, key=_version_key)
    else:
        folder = candidate / str(version)
        if not folder.is_dir():
            return None
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    return entries[0] if len(entries) == 1 else folder


def _version_key(path: Path) -> tuple[int, int, str]:
    name = path.name
    return (1, int(name), "") if name.isdigit() else (0, 0, name)


# --- the import hook --------------------------------------------------------------------------------------------

_SHIMMED = {"azureml.core": True, "azureml.core.model": False}  # name -> is a package


class _Loader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        module.__doc__ = f"Tributary's stand-in for {module.__name__} (see scoring.legacy)."
        module.Model = Model  # type: ignore[attr-defined]
        module.ModelNotFoundException = ModelNotFoundException  # type: ignore[attr-defined]


class _Finder(importlib.abc.MetaPathFinder):
    """Serves `azureml.core` and `azureml.core.model` when no other finder could."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _SHIMMED:
            return None
        is_package = _SHIMMED[fullname]
        spec = importlib.util.spec_from_loader(fullname, _Loader(), is_package=is_package)
        if spec is not None and is_package:
            spec.submodule_search_locations = []
        return spec


def install() -> None:
    """Make `azureml.core.model` importable as a last resort (idempotent)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
