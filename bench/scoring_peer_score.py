"""examples/score.py, unchanged, as the benchmark's peer (azmlinfsrv) loads it.

The peer's virtualenv has no azureml-core, so this installs Tributary's `azureml.core.model` stand-in (as the
Tributary runtime does) and the collector comes from the repository (PYTHONPATH); then it hands over the sample's
own init() and run() functions: azmlinfsrv calls exactly the code the Tributary runtime calls.
"""

import importlib.util
from pathlib import Path

import scoring.legacy

scoring.legacy.install()

_spec = importlib.util.spec_from_file_location(
    "sample_score", Path(__file__).resolve().parent.parent / "examples" / "score.py"
)
_sample = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_sample)

init = _sample.init
run = _sample.run
