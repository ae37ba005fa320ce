"""The scoring runtime end to end: legacy-shaped scripts served by `python -m scoring`, rows landing in Azurite.

Each test starts a real runtime process (gunicorn) on a free loopback port, talks HTTP to it, and reads what
the collector wrote from the test's own blob container.
"""

from __future__ import annotations

import csv
import http.client
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from azure.storage.blob import ContainerClient

from collector import config as dc
from devstack import free_port
from scoring import config as scoring_config
from tests.conftest import REPO, wait_until

EXAMPLES = REPO / "examples"
WORKSPACE = "sub-1/rg-1/ws-1"


@dataclass
class Runtime:
    """A `python -m scoring` process started by a test."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    service: str = ""
    env: dict[str, str] = field(default_factory=dict)

    def request(
        self, method: str, path: str, body: bytes | str | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    def score(self, payload: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        body = payload if isinstance(payload, str | bytes) else json.dumps(payload)
        if isinstance(body, str):  # http.client would send a str as Latin-1
            body = body.encode()
        status, _, out = self.request("POST", "/score", body, headers)
        return status, json.loads(out)

    def answers(self, path: str) -> int | None:
        try:
            return self.request("GET", path)[0]
        except OSError:
            return None

    def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"the runtime exited with {self.process.returncode}:\n{self.log()}")
            return self.answers("/ready") == 200

        wait_until(ready, timeout=timeout, message=f"GET /ready on port {self.port}")

    def status(self) -> dict[str, Any]:
        return json.loads(self.request("GET", "/status")[2])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


def start_runtime(
    script: Path, tmp_path: Path, *, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
) -> Runtime:
    port = free_port()
    log_path = tmp_path / f"runtime-{port}.log"
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("AML_", "AZUREML_", "SCORING_", "OTEL_"))}
    child_env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", **(env or {}))
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "scoring", "--entry-script", str(script), "--port", str(port), *args],
            cwd=script.parent,
            env=child_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Runtime(process, port, log_path, child_env.get(dc.SERVICE_NAME, ""), child_env)


def write_script(tmp_path: Path, source: str, name: str = "score.py") -> Path:
    path = tmp_path / "app" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def collecting_env(azurite: str, container: ContainerClient, tmp_path: Path, **extra: str) -> dict[str, str]:
    """What a compute driver sets, with a short flush interval so rows show up quickly."""
    return {
        **dc.environ_for(
            enabled=True,
            connection_string=azurite,
            workspace=WORKSPACE,
            service_name=f"svc-{uuid.uuid4().hex[:8]}",
            model_versions={"sample-model": "1", "best_model": "3"},
            **{
                dc.CONTAINER: container.container_name,
                dc.SPOOL_DIR: str(tmp_path / "spool"),
                dc.FLUSH_INTERVAL: "0.1",
            },
        ),
        **extra,
    }


def rows(container: ContainerClient, runtime: Runtime, model: str, version: str, designation: str) -> list[list[str]]:
    """Every CSV row (header first) the collector wrote for one model and designation."""
    prefix = f"{WORKSPACE}/{runtime.service}/{model}/{version}/{designation}/"
    out: list[list[str]] = []
    for blob in sorted(container.list_blobs(name_starts_with=prefix), key=lambda b: b.name):
        text = container.download_blob(blob.name).readall().decode()
        parsed = list(csv.reader(io.StringIO(text)))
        out.extend(parsed if not out else parsed[1:])
    return out


def wait_for_rows(container: ContainerClient, runtime: Runtime, model: str, version: str, designation: str, n: int):
    """The header and `n` rows, once they have all arrived."""
    return wait_until(
        lambda: (found := rows(container, runtime, model, version, designation)) and len(found) - 1 >= n and found,
        timeout=20,
        message=f"{n} {designation} rows of {model} in blob storage",
    )


@pytest.fixture
def runtimes() -> Iterator[list[Runtime]]:
    started: list[Runtime] = []
    yield started
    for runtime in started:
        runtime.stop()


# --- the sample: numpy input, two collectors, Model.get_model_path ---------------------------------------------


def test_it_serves_the_sample_and_collects_numpy_rows(azurite, blob_container, tmp_path, runtimes) -> None:
    runtime = start_runtime(
        EXAMPLES / "score.py",
        tmp_path,
        env=collecting_env(azurite, blob_container, tmp_path),
        args=("--model-dir", str(EXAMPLES / "sample_model")),
    )
    runtimes.append(runtime)
    runtime.wait_ready()
    payload = json.loads((EXAMPLES / "sample_request.json").read_text())

    status, answer = runtime.score(payload, headers={"x-request-id": "req-42"})

    saved = np.load(EXAMPLES / "sample_model" / "model.npz")
    expected = np.array(payload["data"], dtype=float) @ saved["coef"] + float(saved["intercept"])
    assert status == 200
    assert answer == pytest.approx(expected.tolist())
    inputs = wait_for_rows(blob_container, runtime, "sample-model", "1", "inputs", 2)
    header = inputs[0]
    assert header[:10] == [f"feat{i}" for i in range(1, 11)]
    assert header[10:] == [
        "$aml_dc_correlation_id",
        "$aml_dc_scoring_timestamp",
        "$aml_dc_boundary",
        "$aml_workspace",
        "$aml_service_name",
        "$aml_model_name",
        "$aml_model_version",
        "$aml_request_id",
    ]
    assert [float(v) for v in inputs[1][:10]] == payload["data"][0]
    row = dict(zip(header, inputs[1], strict=True))
    assert row["$aml_request_id"] == "req-42"
    assert row["$aml_service_name"] == runtime.service
    predictions = wait_for_rows(blob_container, runtime, "sample-model", "1", "predictions", 2)
    assert predictions[0][0] == "prediction"
    assert [float(r[0]) for r in predictions[1:]] == pytest.approx(expected.tolist())
    # Each prediction carries its request's inputs' correlation id: the two files join.
    assert {r[predictions[0].index("$aml_dc_correlation_id")] for r in predictions[1:]} == {
        row["$aml_dc_correlation_id"]
    }


# --- legacy shapes ------------------------------------------------------------------------------------------------

DATAFRAME_SCRIPT = """
    import json
    import pandas as pd
    from azureml.monitoring import ModelDataCollector

    def init():
        global inputs_dc, prediction_dc
        inputs_dc = ModelDataCollector("best_model", designation="inputs")
        prediction_dc = ModelDataCollector("best_model", identifier="predictions", feature_names=["Scored Labels"])

    def run(raw_data):
        df = pd.DataFrame(json.loads(raw_data)["Inputs"]["input1"])
        inputs_dc.collect(df)
        labels = (df["age"] > 40).astype(int)
        prediction_dc.collect(labels.to_frame())
        return {"Results": {"output1": labels.tolist()}}
"""


def test_it_collects_dataframe_input_with_its_columns(azurite, blob_container, tmp_path, runtimes) -> None:
    script = write_script(tmp_path, DATAFRAME_SCRIPT)
    runtime = start_runtime(script, tmp_path, env=collecting_env(azurite, blob_container, tmp_path))
    runtimes.append(runtime)
    runtime.wait_ready()

    payload = {"Inputs": {"input1": [{"age": 39, "workclass": "State-gov"}, {"age": 50, "workclass": "Private"}]}}
    status, answer = runtime.score(payload)

    assert (status, answer) == (200, {"Results": {"output1": [0, 1]}})
    inputs = wait_for_rows(blob_container, runtime, "best_model", "3", "inputs", 2)
    assert inputs[0][:2] == ["age", "workclass"]
    assert [r[:2] for r in inputs[1:]] == [["39", "State-gov"], ["50", "Private"]]
    predictions = wait_for_rows(blob_container, runtime, "best_model", "3", "predictions", 2)
    assert predictions == [["Scored Labels"], ["0"], ["1"]]


LISTS_SCRIPT = """
    import json
    from azureml.monitoring import ModelDataCollector

    # Created at import, before init() loads anything: the legacy samples did both.
    inputs_dc = ModelDataCollector("best_model", designation="inputs", feature_names=["a", "b", "c"])
    prediction_dc = ModelDataCollector("best_model", designation="predictions", feature_names=["p1", "p2"])
    signals_dc = ModelDataCollector("best_model", designation="signals")

    def init():
        global model
        model = {"weight": 2}

    def run(raw_data):
        data = json.loads(raw_data)["data"]
        inputs_dc.collect(data)                      # a list of rows: rows
        result = [sum(row) * model["weight"] for row in data]
        prediction_dc.collect(result)                # a flat list: ONE row, as the legacy package wrote it
        signals_dc.collect(["ok", len(data)])
        return result
"""


def test_it_collects_lists_and_collectors_made_before_the_model(azurite, blob_container, tmp_path, runtimes) -> None:
    script = write_script(tmp_path, LISTS_SCRIPT)
    runtime = start_runtime(script, tmp_path, env=collecting_env(azurite, blob_container, tmp_path))
    runtimes.append(runtime)
    runtime.wait_ready()

    assert runtime.score({"data": [[1, 2, 3], [4, 5, 6]]}) == (200, [12, 30])

    inputs = wait_for_rows(blob_container, runtime, "best_model", "3", "inputs", 2)
    assert [r[:3] for r in inputs] == [["a", "b", "c"], ["1", "2", "3"], ["4", "5", "6"]]
    assert wait_for_rows(blob_container, runtime, "best_model", "3", "predictions", 1) == [["p1", "p2"], ["12", "30"]]
    signals = wait_for_rows(blob_container, runtime, "best_model", "3", "signals", 1)
    assert signals[1] == ["ok", "2"]


RAISING_SCRIPT = """
    import json
    from azureml.monitoring import ModelDataCollector

    def init():
        global inputs_dc
        inputs_dc = ModelDataCollector("best_model", designation="inputs", feature_names=["x"])

    def run(raw_data):
        data = json.loads(raw_data)
        inputs_dc.collect([data["x"]])
        if data["x"] < 0:
            raise ValueError(f"x must be positive, not {data['x']}")
        return {"y": data["x"] * 10}
"""


def test_it_answers_500_with_the_message_when_run_raises(azurite, blob_container, tmp_path, runtimes) -> None:
    script = write_script(tmp_path, RAISING_SCRIPT)
    runtime = start_runtime(script, tmp_path, env=collecting_env(azurite, blob_container, tmp_path))
    runtimes.append(runtime)
    runtime.wait_ready()

    status, headers, body = runtime.request("POST", "/score", json.dumps({"x": -1}))

    assert status == 500
    assert json.loads(body) == {"message": "x must be positive, not -1", "error": "ValueError"}
    assert headers["x-ms-run-function-failed"] == "True"
    assert runtime.score({"x": 2}) == (200, {"y": 20})
    log = wait_until(lambda: "ValueError: x must be positive" in runtime.log() and runtime.log(), message="the log")
    assert "run() raised ValueError: x must be positive, not -1" in log
    assert "Traceback (most recent call last)" in log
    # The rows collected before the exception still arrive.
    assert wait_for_rows(blob_container, runtime, "best_model", "3", "inputs", 2)[1][0] == "-1"
    counts = runtime.status()["requests"]
    assert (counts["score_requests"], counts["score_ok"], counts["score_errors"]) == (2, 1, 1)


DECORATED_EXITING_SCRIPT = """
    import sys

    def timed(fn):  # no functools.wraps: run() looks like run(*args, **kwargs)
        def wrapper(*args, **kwargs):
            return fn(*args, **kwargs)
        return wrapper

    def init():
        pass

    @timed
    def run(raw_data):
        if raw_data == "exit":
            sys.exit("bad input")  # a legacy habit: it must not take the worker down
        return {"got": raw_data}
"""


def test_it_serves_a_run_wrapped_without_wraps_and_survives_its_sys_exit(tmp_path, runtimes) -> None:
    runtime = start_runtime(write_script(tmp_path, DECORATED_EXITING_SCRIPT), tmp_path)
    runtimes.append(runtime)
    runtime.wait_ready()
    assert runtime.score("hello") == (200, {"got": "hello"})
    worker_pids = set(children(runtime.process.pid))

    status, _, body = runtime.request("POST", "/score", "exit")

    assert (status, json.loads(body)) == (500, {"message": "bad input", "error": "SystemExit"})
    assert runtime.score("again") == (200, {"got": "again"})
    assert set(children(runtime.process.pid)) == worker_pids  # the same workers: none ended or restarted


MODEL_PATH_SCRIPT = """
    import json
    import os
    from azureml.core.model import Model
    from azureml.core import Model as SameModel

    def init():
        global weights, scaler, model_dir
        assert SameModel is Model
        weights = json.loads(open(Model.get_model_path("weights")).read())
        scaler = json.loads(open(os.path.join(Model.get_model_path("scaler", version=1), "scale.json")).read())
        model_dir = os.getenv("AZUREML_MODEL_DIR")

    def run(raw_data):
        x = json.loads(raw_data)["x"]
        return {"y": x * weights["w"] * scaler["factor"], "model_dir": model_dir}
"""


def test_it_finds_models_with_get_model_path(tmp_path, runtimes) -> None:
    root = tmp_path / "models"
    for version, w in (("1", 1), ("2", 3)):  # the latest version is taken
        (root / "weights" / version).mkdir(parents=True)
        (root / "weights" / version / "weights.json").write_text(json.dumps({"w": w}))
    (root / "scaler" / "1" / "scaler").mkdir(parents=True)  # a folder model: get_model_path gives the folder
    (root / "scaler" / "1" / "scaler" / "scale.json").write_text(json.dumps({"factor": 10}))
    script = write_script(tmp_path, MODEL_PATH_SCRIPT)
    runtime = start_runtime(script, tmp_path, args=("--model-dir", str(root)))
    runtimes.append(runtime)
    runtime.wait_ready()

    assert runtime.score({"x": 2}) == (200, {"y": 60, "model_dir": str(root)})


HEADERS_SCRIPT = """
    def init():
        pass

    def run(data, request_headers):
        return {"data": data, "agent": request_headers.get("User-Agent"), "trace": request_headers.get("X-Trace")}
"""


def test_it_passes_the_raw_body_and_request_headers(tmp_path, runtimes) -> None:
    runtime = start_runtime(write_script(tmp_path, HEADERS_SCRIPT), tmp_path)
    runtimes.append(runtime)
    runtime.wait_ready()

    status, answer = runtime.score("not JSON, ünïcode", headers={"User-Agent": "tests", "X-Trace": "t-1"})

    assert (status, answer) == (200, {"data": "not JSON, ünïcode", "agent": "tests", "trace": "t-1"})
    status, _, body = runtime.request("POST", "/score", b"\xff\xfe")
    assert status == 400
    assert "UTF-8" in json.loads(body)["message"]


KEYS_SCRIPT = """
    def init():
        pass

    def run(data, request_headers):
        return {"data": data, "authorization": request_headers.get("Authorization")}
"""


def test_with_key_digests_set_it_scores_only_requests_that_present_one_of_the_keys(tmp_path, runtimes) -> None:
    primary, secondary = "primary-key-" + "p" * 32, "secondary-key-" + "s" * 32
    digests = f"{scoring_config.key_hash(primary)}, {scoring_config.key_hash(secondary).upper()}"
    runtime = start_runtime(write_script(tmp_path, KEYS_SCRIPT), tmp_path, env={scoring_config.KEY_HASHES: digests})
    runtimes.append(runtime)
    runtime.wait_ready()

    for key in (primary, secondary):
        status, answer = runtime.score("x", headers={"Authorization": f"Bearer {key}"})
        # The key is the portal's, not the script's: run() never sees it.
        assert (status, answer) == (200, {"data": "x", "authorization": None})
    for headers, said in (
        ({}, "this service needs a key"),
        ({"Authorization": "Bearer wrong"}, "not one of this service's keys"),
        ({"Authorization": f"Basic {primary}"}, "not one of this service's keys"),
        ({"Authorization": f"Bearer {scoring_config.key_hash(primary)}"}, "not one of this service's keys"),
    ):
        status, response_headers, body = runtime.request("POST", "/score", b"x", headers)
        assert status == 401, headers
        assert said in json.loads(body)["message"]
        assert response_headers["www-authenticate"].startswith("Bearer")
        assert primary not in body.decode()
    # Probes and figures need no key: the platform asks them.
    assert runtime.answers("/ready") == 200
    status, _, body = runtime.request("GET", "/status")
    assert status == 200
    assert json.loads(body)["requests"]["score_client_errors"] == 4
    assert "key required (2 valid digest(s))" in runtime.log()
    assert primary not in runtime.log()
    assert secondary not in runtime.log()


@pytest.mark.parametrize("digests", ["not-a-digest", "", " , "])
def test_key_digests_that_are_all_invalid_or_none_refuse_every_request_rather_than_none(
    tmp_path, runtimes, digests
) -> None:
    runtime = start_runtime(write_script(tmp_path, KEYS_SCRIPT), tmp_path, env={scoring_config.KEY_HASHES: digests})
    runtimes.append(runtime)
    runtime.wait_ready()

    for headers in ({}, {"Authorization": "Bearer not-a-digest"}, {"Authorization": "Bearer "}):
        assert runtime.request("POST", "/score", b"x", headers)[0] == 401
    assert "no valid digest" in runtime.log()
    assert json.loads(runtime.request("GET", "/status")[2])["key_required"] is True


SCHEMA_SCRIPT = """
    import numpy as np
    from inference_schema.schema_decorators import input_schema, output_schema
    from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType
    from inference_schema.parameter_types.standard_py_parameter_type import StandardPythonParameterType

    def init():
        pass

    @input_schema("data", NumpyParameterType(np.array([[1.0, 2.0]])))
    @input_schema("scale", StandardPythonParameterType(1.0))
    @output_schema(StandardPythonParameterType([1.0]))
    def run(data, scale=1.0):
        assert isinstance(data, np.ndarray)
        return (data.sum(axis=1) * scale).tolist()
"""


def test_it_serves_inference_schema_decorated_scripts(tmp_path, runtimes) -> None:
    runtime = start_runtime(write_script(tmp_path, SCHEMA_SCRIPT), tmp_path)
    runtimes.append(runtime)
    runtime.wait_ready()

    assert runtime.score({"data": [[1.0, 2.0], [3.0, 4.0]], "scale": 2}) == (200, [6.0, 14.0])
    assert runtime.score({"data": [[1.0, 2.0]]}) == (200, [3.0])
    status, answer = runtime.score([1, 2])
    assert status == 400
    assert "JSON object" in answer["message"]


def swagger(runtime: Runtime, query: str = "") -> tuple[int, Any]:
    status, headers, body = runtime.request("GET", f"/swagger.json{query}")
    assert headers["content-type"] == "application/json"
    return status, json.loads(body)


def test_it_describes_a_decorated_run_in_swagger_2_by_default_and_in_openapi_3(tmp_path, runtimes) -> None:
    runtime = start_runtime(write_script(tmp_path, SCHEMA_SCRIPT), tmp_path, env={dc.SERVICE_NAME: "churn"})
    runtimes.append(runtime)
    runtime.wait_ready()

    status, document = swagger(runtime)

    assert status == 200
    assert (document["swagger"], document["info"]["title"]) == ("2.0", "churn")
    service_input = document["definitions"]["ServiceInput"]
    assert service_input["properties"]["data"]["items"] == {
        "type": "array",
        "items": {"type": "number", "format": "double"},
    }
    assert service_input["properties"]["scale"] == {"type": "number", "format": "double"}
    assert service_input["example"] == {"data": [[1.0, 2.0]], "scale": 1.0}
    assert document["definitions"]["ServiceOutput"] == {
        "type": "array",
        "items": {"type": "number", "format": "double"},
        "example": [1.0],
    }
    score = document["paths"]["/score"]["post"]
    assert score["parameters"][0]["schema"] == {"$ref": "#/definitions/ServiceInput"}
    assert "security" not in score  # this service needs no key
    assert "securityDefinitions" not in document
    # What the document says to send is what the service takes.
    assert runtime.score(service_input["example"]) == (200, [3.0])

    status, openapi = swagger(runtime, "?version=3")
    assert (status, openapi["openapi"]) == (200, "3.0.3")
    assert openapi["components"]["schemas"]["ServiceInput"] == service_input
    assert swagger(runtime, "?version=3.1")[1]["openapi"] == "3.1.0"
    assert swagger(runtime, "?version=2.0")[1] == document
    assert swagger(runtime, "?version=4") == (
        404,
        {"message": "Swagger version [4] is not valid. Supported versions: [2.0, 3.0, 3.1]."},
    )


def test_its_swagger_needs_no_key_and_says_that_scoring_needs_one(tmp_path, runtimes) -> None:
    env = {scoring_config.KEY_HASHES: scoring_config.key_hash("k" * 32)}
    runtime = start_runtime(write_script(tmp_path, SCHEMA_SCRIPT), tmp_path, env=env)
    runtimes.append(runtime)
    runtime.wait_ready()

    status, document = swagger(runtime)

    assert status == 200
    assert runtime.score({"data": [[1.0, 2.0]]})[0] == 401
    assert document["securityDefinitions"]["Bearer"]["name"] == "Authorization"
    assert document["paths"]["/score"]["post"]["security"] == [{"Bearer": []}]
    assert swagger(runtime, "?version=3")[1]["components"]["securitySchemes"]["Bearer"]["in"] == "header"


UNDECORATED_SCRIPT = """
    import sys

    def init():
        pass

    def run(raw_data):
        return sorted(name for name in sys.modules if name.startswith("inference_schema"))
"""


def test_without_decorators_there_is_no_swagger_and_inference_schema_stays_unimported(tmp_path, runtimes) -> None:
    runtime = start_runtime(write_script(tmp_path, UNDECORATED_SCRIPT), tmp_path)
    runtimes.append(runtime)
    runtime.wait_ready()

    status, answer = swagger(runtime)

    assert status == 404
    assert answer["message"].startswith("Swagger not found: run() has no inference_schema decorators")
    assert runtime.score("{}") == (200, [])


FAILING_SCHEMA_SCRIPT = (
    SCHEMA_SCRIPT
    + """
    import inference_schema.schema_util

    def _broken(run):
        raise ValueError("no schema today")

    inference_schema.schema_util.get_output_schema = _broken
"""
)


def test_when_its_swagger_cannot_be_generated_it_says_why_and_still_scores(tmp_path, runtimes) -> None:
    runtime = start_runtime(write_script(tmp_path, FAILING_SCHEMA_SCRIPT), tmp_path)
    runtimes.append(runtime)
    runtime.wait_ready()

    first, second = swagger(runtime), swagger(runtime)

    assert (
        first
        == second
        == (
            404,
            {"message": "Swagger not found: generating it from run()'s decorators raised ValueError: no schema today"},
        )
    )
    assert runtime.score({"data": [[1.0, 2.0]]}) == (200, [3.0])
    assert runtime.log().count("cannot generate the swagger document") == 1  # once, not per request


# --- readiness, status, failures, shutdown -------------------------------------------------------------------

SLOW_INIT_SCRIPT = """
    import os, time

    def init():
        # Loads "the model" once the test allows it.
        while not os.path.exists(os.environ["RELEASE_FILE"]):
            time.sleep(0.02)

    def run(raw_data):
        return "scored"
"""


def test_it_is_live_at_once_and_ready_only_after_init(tmp_path, runtimes) -> None:
    release = tmp_path / "release"
    runtime = start_runtime(
        write_script(tmp_path, SLOW_INIT_SCRIPT), tmp_path, env={"RELEASE_FILE": str(release)}, args=("--workers", "2")
    )
    runtimes.append(runtime)

    wait_until(lambda: runtime.answers("/") == 200, timeout=20, message="liveness")
    assert runtime.request("GET", "/")[2] == b"Healthy"
    status, _, body = runtime.request("GET", "/ready")
    assert status == 503
    assert json.loads(body)["message"] == "init() has not returned yet"
    assert runtime.request("GET", "/swagger.json")[0] == 503  # its swagger, if any, comes from the loaded script

    release.touch()
    runtime.wait_ready()
    assert runtime.score("{}") == (200, "scored")
    status = runtime.status()
    assert status["ready"] is True
    assert [w["ready"] for w in status["workers"]] == [True, True]


def serve_sample_on_two_workers(
    azurite: str, container: ContainerClient, tmp_path: Path, runtimes: list[Runtime]
) -> tuple[Runtime, str]:
    """The sample, collecting, on two workers, ready; and its request body."""
    runtime = start_runtime(
        EXAMPLES / "score.py",
        tmp_path,
        env=collecting_env(azurite, container, tmp_path),
        args=("--model-dir", str(EXAMPLES / "sample_model"), "--workers", "2"),
    )
    runtimes.append(runtime)
    runtime.wait_ready()
    return runtime, (EXAMPLES / "sample_request.json").read_text()


def test_it_reports_counts_latencies_and_collector_counters(azurite, blob_container, tmp_path, runtimes) -> None:
    runtime, payload = serve_sample_on_two_workers(azurite, blob_container, tmp_path, runtimes)
    for _ in range(10):
        assert runtime.score(payload)[0] == 200
    assert runtime.request("POST", "/score", "not json")[0] == 500

    def settled() -> dict[str, Any] | None:
        # Other workers publish their figures every second.
        status = runtime.status()
        return (
            status
            if status["collector"]["rows_delivered"] == 40 and status["requests"]["score_requests"] == 11
            else None
        )

    status = wait_until(settled, timeout=20, message="all rows delivered and counted")
    assert status["requests"]["score_ok"] == 10
    assert status["requests"]["score_errors"] == 1
    assert 0 < status["latency"]["p50_ms"] <= status["latency"]["p99_ms"] <= status["latency"]["max_ms"]
    assert status["collector"]["rows_collected"] == 40
    assert status["collector"]["mode"] == "upload"
    assert status["collector"]["rows_dropped_total"] == 0
    assert len(status["workers"]) == 2
    assert status["telemetry"] == "off"


def children(pid: int) -> dict[int, str]:
    """The child processes of `pid`, with their command lines."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out[int(stat.parent.name)] = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
    return out


def delivery_agent(runtime: Runtime) -> int | None:
    agents = [pid for pid, cmd in children(runtime.process.pid).items() if "collector.agent" in cmd]
    return agents[0] if len(agents) == 1 else None


def test_a_delivery_agent_uploads_for_the_workers_and_is_restarted(azurite, blob_container, tmp_path, runtimes):
    runtime, payload = serve_sample_on_two_workers(azurite, blob_container, tmp_path, runtimes)
    for _ in range(5):
        assert runtime.score(payload)[0] == 200
    wait_for_rows(blob_container, runtime, "sample-model", "1", "inputs", 10)
    agent = wait_until(lambda: delivery_agent(runtime), timeout=10, message="the delivery agent")

    os.kill(agent, signal.SIGKILL)
    wait_until(lambda: delivery_agent(runtime) not in (None, agent), timeout=20, message="a new delivery agent")
    for _ in range(5):
        assert runtime.score(payload)[0] == 200

    assert len(wait_for_rows(blob_container, runtime, "sample-model", "1", "inputs", 20)) == 1 + 20

    def settled() -> dict[str, Any] | None:
        collector = runtime.status()["collector"]
        return collector if collector["spool_bytes"] == 0 and collector["rows_delivered"] >= 20 else None

    collector = wait_until(settled, timeout=20, message="the new agent's counts")
    assert collector["rows_collected"] == 40
    # The killed agent may not have published its last count: counts are kept across restarts, not crashes.
    assert collector["rows_delivered"] <= 40, collector
    assert "the collector's delivery agent exited" in runtime.log()
    last = delivery_agent(runtime)
    assert runtime.stop() == 0
    assert not Path(f"/proc/{last}").exists()  # stopped with the runtime, not orphaned


def test_the_spool_bound_holds_for_the_replica_not_for_each_worker(azurite, blob_container, tmp_path, runtimes):
    bound = 64 * 1024
    unreachable = re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{free_port()}", azurite)
    env = collecting_env(azurite, blob_container, tmp_path, **{dc.STORAGE: unreachable, dc.SPOOL_MAX_BYTES: str(bound)})
    runtime = start_runtime(
        EXAMPLES / "score.py",
        tmp_path,
        env=env,
        args=("--model-dir", str(EXAMPLES / "sample_model"), "--workers", "2"),
    )
    runtimes.append(runtime)
    runtime.wait_ready()
    payload = (EXAMPLES / "sample_request.json").read_text()
    with ThreadPoolExecutor(8) as pool:  # enough for both workers to fill what they may spool
        assert set(pool.map(lambda _: runtime.score(payload)[0], range(1500))) == {200}

    def full() -> dict[str, Any] | None:
        status = runtime.status()
        return status if len(status["workers"]) == 2 and status["collector"]["rows_dropped_total"] > 0 else None

    collector = wait_until(full, timeout=20, message="rows dropped with the spool full")["collector"]
    assert {reason for reason, n in collector["rows_dropped"].items() if n} == {"spool_full"}
    spooled = sum(f.stat().st_size for f in (tmp_path / "spool").rglob("*.seg"))
    assert bound / 2 < spooled <= bound


FAILING_INIT_SCRIPT = """
    from azureml.core.model import Model

    def init():
        Model.get_model_path("missing-model")

    def run(raw_data):
        return None
"""


def test_it_exits_with_the_reason_when_init_fails(tmp_path) -> None:
    runtime = start_runtime(write_script(tmp_path, FAILING_INIT_SCRIPT), tmp_path, args=("--workers", "2"))

    assert runtime.process.wait(30) == 3
    log = runtime.log()
    assert "FAILED: init() raised ModelNotFoundException: model missing-model not found" in log
    assert "Traceback (most recent call last)" in log


def test_it_refuses_to_start_without_a_script(tmp_path) -> None:
    runtime = start_runtime(tmp_path / "nowhere.py", tmp_path)

    assert runtime.process.wait(30) == 2
    assert f"FAILED: entry script {tmp_path / 'nowhere.py'} does not exist" in runtime.log()


def test_it_flushes_collected_rows_on_sigterm(azurite, blob_container, tmp_path) -> None:
    # Nothing is uploaded on its own within the test: only the shutdown flush can deliver the rows.
    env = collecting_env(azurite, blob_container, tmp_path, **{dc.FLUSH_INTERVAL: "3600"})
    runtime = start_runtime(
        EXAMPLES / "score.py", tmp_path, env=env, args=("--model-dir", str(EXAMPLES / "sample_model"))
    )
    runtime.wait_ready()
    payload = (EXAMPLES / "sample_request.json").read_text()
    for _ in range(25):
        assert runtime.score(payload)[0] == 200

    assert runtime.stop() == 0

    assert len(rows(blob_container, runtime, "sample-model", "1", "inputs")) == 1 + 50
    assert len(rows(blob_container, runtime, "sample-model", "1", "predictions")) == 1 + 50
    assert "Shutting down: Master" in runtime.log()


def test_it_answers_unknown_paths_and_methods(tmp_path, runtimes) -> None:
    runtime = start_runtime(write_script(tmp_path, HEADERS_SCRIPT), tmp_path)
    runtimes.append(runtime)
    runtime.wait_ready()

    assert runtime.request("GET", "/score")[0] == 405
    assert runtime.request("GET", "/nothing")[0] == 404
    status, _, body = runtime.request("POST", "/score", b"x" * 2048, {"x-request-id": "r" * 101})
    assert status == 431
    assert "x-request-id" in json.loads(body)["message"]


def test_it_keeps_counting_across_a_worker_restart(tmp_path, runtimes) -> None:
    runtime = start_runtime(write_script(tmp_path, HEADERS_SCRIPT), tmp_path)
    runtimes.append(runtime)
    runtime.wait_ready()
    for _ in range(5):
        assert runtime.score("x")[0] == 200
    (worker,) = runtime.status()["workers"]
    board = wait_until(
        lambda: [
            p
            for p in Path(tempfile.gettempdir()).glob("tributary-scoring-*/worker-*.json")
            if str(worker["pid"]) in p.name
        ],
        message="the worker's published figures",
    )
    wait_until(lambda: json.loads(board[0].read_text())["requests"]["counts"]["score_requests"] == 5)
    # It dies with rows still queued: a level that went with it, not a count to add to the new worker's.
    os.kill(worker["pid"], signal.SIGSTOP)
    figures = json.loads(board[0].read_text())
    figures["collector"].update(queue_rows=500, spool_bytes=4096, rows_collected=7)
    board[0].write_text(json.dumps(figures))

    os.kill(worker["pid"], signal.SIGKILL)  # the master starts another one

    def restarted() -> dict[str, Any] | None:
        if runtime.answers("/ready") != 200:
            return None
        status = runtime.status()
        return status if status["workers"][0]["pid"] != worker["pid"] else None

    status = wait_until(restarted, timeout=20, message="a new worker")
    assert status["workers_exited"] == 1
    assert status["requests"]["score_requests"] == 5
    collected = status["collector"]
    assert (collected["rows_collected"], collected["queue_rows"], collected["spool_bytes"]) == (7, 0, 0)
    assert runtime.score("y") == (200, {"data": "y", "agent": None, "trace": None})


STUCK_SCRIPT = """
    import os
    import pathlib
    import threading

    def init():
        pass

    def run(raw_data):
        if raw_data == "hang":
            pathlib.Path(os.environ["STUCK_MARK"]).touch()
            threading.Event().wait()  # a deadlock, say: it never returns
        return os.getpid()
"""


def test_a_run_that_outlasts_worker_timeout_restarts_its_worker_and_the_service_answers_again(
    tmp_path, runtimes
) -> None:
    # One run() at a time (the gate): without a restart, this worker would never answer another request, while its
    # probes went on saying it was ready.
    mark = tmp_path / "stuck"
    runtime = start_runtime(
        write_script(tmp_path, STUCK_SCRIPT),
        tmp_path,
        env={scoring_config.WORKER_TIMEOUT: "4", scoring_config.GRACEFUL_TIMEOUT: "30", "STUCK_MARK": str(mark)},
    )
    runtimes.append(runtime)
    runtime.wait_ready()
    (worker,) = runtime.status()["workers"]

    def post(body: bytes, request_id: str) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", runtime.port, timeout=60)
        try:
            connection.request("POST", "/score", body=body, headers={"x-request-id": request_id})
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=2) as pool:
        stuck = pool.submit(post, b"hang", "req-stuck")
        wait_until(mark.exists, timeout=10, message="the stuck run()")
        queued = pool.submit(post, b"x", "req-queued")  # waits for its turn at run(), behind the stuck one
        wait_until(
            lambda: "run() of request req-stuck has run for" in runtime.log(),
            timeout=20,
            message="the worker giving up on the stuck run()",
        )
        assert "more than WORKER_TIMEOUT (4 s): restarting this worker" in runtime.log()
        # The request that waited is told to come again at once, not dropped at the end of a drain.
        status, headers, _ = queued.result(timeout=10)
        assert (status, headers["retry-after"]) == (503, "1")

        def answered_by_another() -> bool:
            try:
                status, pid = runtime.score("x")
            except OSError:  # no worker on the port for a moment
                return False
            return status == 200 and pid != worker["pid"]

        wait_until(answered_by_another, timeout=30, message="a new worker answering")
        # The stuck request's client is let go (its worker is gone), not left waiting for ever (nor to its timeout).
        failure = stuck.exception(timeout=20)
    assert isinstance(failure, http.client.RemoteDisconnected | ConnectionResetError), repr(failure)
    assert runtime.status()["workers_exited"] == 1
    # The worker exited by itself: the master did not have to kill one whose exit waited for the stuck thread.
    assert "WORKER TIMEOUT (pid:" not in runtime.log()


HELD_INIT_SCRIPT = """
    import os
    import pathlib
    import time

    def init():
        # A worker started while the hold file exists loads its model until the file is gone.
        hold = pathlib.Path(os.environ["HOLD_FILE"])
        while hold.exists():
            time.sleep(0.05)

    def run(raw_data):
        return os.getpid()
"""


def test_a_worker_started_again_takes_requests_only_once_its_init_has_returned(tmp_path, runtimes) -> None:
    # Each worker listens on a socket of its own and the kernel spreads new connections over them: a worker that
    # listened while it loaded would hold up its share of the requests until its init() returned.
    hold, probe_port = tmp_path / "hold", free_port()
    runtime = start_runtime(
        write_script(tmp_path, HELD_INIT_SCRIPT),
        tmp_path,
        env={"HOLD_FILE": str(hold)},
        args=("--workers", "2", "--probe-port", str(probe_port)),
    )
    runtimes.append(runtime)
    runtime.wait_ready()
    hold.touch()
    dead, alive = (w["pid"] for w in runtime.status()["workers"])
    os.kill(dead, signal.SIGKILL)

    def loading() -> bool:
        try:
            workers = {w["pid"]: w["ready"] for w in runtime.status()["workers"]}
        except OSError:  # a connection the kernel gave the killed worker's socket as it closed
            return False
        return (
            len(workers) == 2
            and dead not in workers
            and workers[alive]
            and not any(ready for pid, ready in workers.items() if pid != alive)
        )

    wait_until(loading, timeout=20, message="a new worker loading its model")

    def answered_by() -> int:  # a new connection each time: the kernel picks a listening worker for each
        connection = http.client.HTTPConnection("127.0.0.1", runtime.port, timeout=2)
        try:
            connection.request("POST", "/score", body=b"{}")
            return int(connection.getresponse().read())
        finally:
            connection.close()

    # Were the loading worker listening, each of these would have an even chance to wait for it (and time out).
    for _ in range(20):
        assert answered_by() == alive
        # The runtime stays ready while one of its workers is: it answers every request.
        assert probe(probe_port, "/ready") == (200, b"Ready")
    assert runtime.answers("/ready") == 200
    assert runtime.status()["ready"] is True

    hold.unlink()
    wait_until(lambda: "listening on the port" in runtime.log(), message="the new worker on the port")
    assert len({answered_by() for _ in range(30)}) == 2  # it takes its share now


def test_a_lone_worker_started_again_listens_at_once_and_requests_wait_for_its_init(tmp_path, runtimes) -> None:
    # With no other worker to take the requests, the port must not close while the model loads.
    hold = tmp_path / "hold"
    runtime = start_runtime(write_script(tmp_path, HELD_INIT_SCRIPT), tmp_path, env={"HOLD_FILE": str(hold)})
    runtimes.append(runtime)
    runtime.wait_ready()
    hold.touch()
    (dead,) = (w["pid"] for w in runtime.status()["workers"])
    os.kill(dead, signal.SIGKILL)

    def loading() -> bool:
        try:
            return [w["ready"] for w in runtime.status()["workers"] if w["pid"] != dead] == [False]
        except OSError:
            return False

    wait_until(loading, timeout=20, message="a new worker loading its model")
    assert runtime.answers("/") == 200  # live, on the main port
    assert runtime.answers("/ready") == 503
    waiting = ThreadPoolExecutor(1).submit(runtime.score, "{}")
    hold.unlink()
    status, pid = waiting.result(timeout=20)
    assert status == 200
    assert pid != dead


SLEEPING_SCRIPT = """
    import pathlib
    import time

    def init():
        pass

    def run(raw_data):
        seconds, started = raw_data.split()
        pathlib.Path(started).touch()
        time.sleep(float(seconds))
        return "slept"
"""


def test_probes_on_the_probe_port_are_answered_while_every_request_thread_waits_for_run(tmp_path, runtimes) -> None:
    # Two threads: one request in run() for seconds, one waiting for its turn. On the main port a probe would wait
    # behind them; on the probe port each worker answers from a thread of its own.
    probe_port = free_port()
    runtime = start_runtime(
        write_script(tmp_path, SLEEPING_SCRIPT), tmp_path, args=("--threads", "2", "--probe-port", str(probe_port))
    )
    runtimes.append(runtime)
    runtime.wait_ready()
    started = tmp_path / "started"
    busy = ThreadPoolExecutor(3)
    requests = [busy.submit(runtime.request, "POST", "/score", f"3 {started}") for _ in range(3)]
    wait_until(started.exists, message="a request in run()")

    assert probe(probe_port, "/") == (200, b"Healthy")
    assert probe(probe_port, "/ready") == (200, b"Ready")
    runtime.process.send_signal(signal.SIGTERM)  # the worker finishes its requests, and takes no more
    wait_until(lambda: (probe(probe_port, "/ready") or (0,))[0] == 503, message="not ready while it stops")
    assert [request.result(timeout=30)[0] for request in requests] == [200, 200, 200]
    busy.shutdown()


def probe(port: int, path: str) -> tuple[int, bytes] | None:
    """GET `path`, answered within a second: (status, body), or None if nothing answers."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    except OSError:
        return None
    finally:
        connection.close()


def test_it_refuses_a_port_that_is_taken(tmp_path, runtimes) -> None:
    first = start_runtime(write_script(tmp_path, HEADERS_SCRIPT), tmp_path)
    runtimes.append(first)
    first.wait_ready()
    second = start_runtime(
        write_script(tmp_path, HEADERS_SCRIPT, "other.py"), tmp_path, args=("--port", str(first.port))
    )

    assert second.process.wait(30) == 2
    assert f"FAILED: port {first.port} on 127.0.0.1 is in use" in second.log()
    assert "serving" not in second.log()  # it never said it did
