"""A legacy Azure ML scoring script, as teams wrote them for v1 web services: it runs unchanged on Tributary.

It imports `ModelDataCollector` from `azureml.monitoring` and `Model` from `azureml.core.model`, finds its model
with `Model.get_model_path()`, creates its two collectors in init() before it loads the model, and collects each
request's inputs and predictions. numpy is its only library.

    python -m scoring --entry-script examples/score.py --model-dir examples/sample_model --port 5001
    curl -d @examples/sample_request.json http://127.0.0.1:5001/score
"""

import json

import numpy as np
from azureml.core.model import Model
from azureml.monitoring import ModelDataCollector

FEATURES = [f"feat{i}" for i in range(1, 11)]


def init():
    global model, inputs_dc, prediction_dc
    inputs_dc = ModelDataCollector("sample-model", designation="inputs", feature_names=FEATURES)
    prediction_dc = ModelDataCollector("sample-model", designation="predictions", feature_names=["prediction"])
    model_path = Model.get_model_path("sample-model")
    with np.load(model_path) as saved:
        model = (saved["coef"], float(saved["intercept"]))


def run(raw_data):
    data = np.array(json.loads(raw_data)["data"], dtype=float)
    if data.ndim == 1:
        data = data.reshape(1, -1)
    correlations = inputs_dc.collect(data)  # one row per input row
    coef, intercept = model
    result = data @ coef + intercept
    # One row per prediction, carrying the inputs' correlation id, so that the two files can be joined.
    prediction_dc.collect(prediction_dc.add_correlations(result.reshape(-1, 1), correlations))
    return result.tolist()
