"""Legacy import path: `from azureml.monitoring import ModelDataCollector`."""

from collector import *  # noqa: F403
