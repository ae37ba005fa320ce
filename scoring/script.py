"""Load a scoring script (`score.py` with `init()` and `run()`) and call it the way the legacy runtime did.

- The script is imported as module `entry_module` from its file, with its folder first on `sys.path` (so it can
  import the modules beside it), after `scoring.legacy.install()` (so `azureml.core.model` imports).
- `run(raw_data)` gets the request body as a string. A `request_headers` parameter, when declared, gets the
  request's headers as a dict (as azmlinfsrv passes them).
- When `run()` is decorated with `inference_schema`'s `@input_schema` (and that optional package is installed,
  which the script's own import guarantees), the body must be a JSON object and its members are passed as keyword
  arguments named after `run()`'s parameters, the decorator converting them (as azmlinfsrv does).
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scoring import legacy

MODULE_NAME = "entry_module"  # azmlinfsrv's name for it; pickled objects of the script may refer to it


class ScriptError(Exception):
    """The script cannot be served: the message says why."""


class BadInput(Exception):
    """The request cannot be passed to this script's run(): answered 400."""


@dataclass
class EntryScript:
    path: Path
    init: Callable[[], Any]
    run: Callable[..., Any]
    wants_headers: bool  # run() declares a request_headers parameter
    # With @input_schema: run()'s parameters, (name, default or inspect.Parameter.empty); None otherwise.
    schema_params: list[tuple[str, Any]] | None

    @property
    def schema_decorated(self) -> bool:
        """run() has inference_schema decorators: its parameters are passed by name, and it has a swagger document."""
        return self.schema_params is not None

    def call(self, body: str, headers: Mapping[str, str] | None) -> Any:
        """Call run() with a request body; raises BadInput when a schema-decorated run() cannot take it."""
        if self.schema_params is None:
            if self.wants_headers:
                return self.run(body, request_headers=dict(headers or {}))
            return self.run(body)
        try:
            parsed = json.loads(body)
        except ValueError as exc:
            raise BadInput(f"the body must be a JSON object ({exc})") from None
        if not isinstance(parsed, dict):
            raise BadInput("the body must be a JSON object, with one member per run() parameter")
        kwargs = {}
        for name, default in self.schema_params:
            value = parsed.get(name, default)
            if value is inspect.Parameter.empty:
                raise BadInput(f"the body has no value for run()'s {name!r} parameter")
            kwargs[name] = value
        if self.wants_headers:
            kwargs["request_headers"] = dict(headers or {})
        return self.run(**kwargs)


def load(path: str | Path) -> EntryScript:
    """Import the script and check its init() and run(); raises ScriptError, or what the import raised."""
    path = Path(path).resolve()
    if not path.is_file():
        raise ScriptError(f"entry script {path} does not exist")
    legacy.install()
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
    if spec is None or spec.loader is None:
        raise ScriptError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module
    spec.loader.exec_module(module)
    init, run = getattr(module, "init", None), getattr(module, "run", None)
    if not callable(init):
        raise ScriptError(f"{path.name} has no init() function")
    if not callable(run):
        raise ScriptError(f"{path.name} has no run() function")
    return _analyse(path, init, run)


def _analyse(path: Path, init: Callable[[], Any], run: Callable[..., Any]) -> EntryScript:
    P = inspect.Parameter
    params = list(inspect.signature(run).parameters.values())
    # The body goes in positionally, as the legacy runtime passed it: to run()'s first parameter, or to *args (a
    # decorator without functools.wraps leaves run(*args, **kwargs)).
    wants_headers = any(
        p.name == "request_headers" and p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY) for p in params
    )
    named = [p for p in params if p.name != "request_headers" and p.kind not in (P.VAR_POSITIONAL, P.VAR_KEYWORD)]
    if _schema_decorated(run):  # its parameters are passed by name
        if any(p.kind == P.POSITIONAL_ONLY for p in named):
            raise ScriptError("an @input_schema run() cannot take positional-only parameters: they are passed by name")
        if not named:
            raise ScriptError("run() must take a parameter for the input data")
        return EntryScript(path, init, run, wants_headers, [(p.name, p.default) for p in named])
    positional = [p for p in named if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
    if not positional and not any(p.kind == P.VAR_POSITIONAL for p in params):
        raise ScriptError("run() must take a parameter for the input data")
    return EntryScript(path, init, run, wants_headers, None)


def _schema_decorated(run: Callable[..., Any]) -> bool:
    # Only a script that imported inference_schema can have used its decorators: never import it ourselves.
    schema_util = sys.modules.get("inference_schema.schema_util")
    if schema_util is None:
        return False
    try:
        return bool(schema_util.is_schema_decorated(run))
    except Exception:
        return False
