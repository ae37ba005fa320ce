"""A small Python SDK for Tributary's REST API, with the signatures of Azure ML's v1 web service SDK.

    from tributary_sdk import Workspace, Webservice, AksWebservice, InferenceConfig, Model

    ws = Workspace("sub-0001", "rg-ml", "churn-team", url="https://tributary.example.org", token="trib_...")
    service = Webservice(ws, "churn")
    service.update(collect_model_data=False)
    service.wait_for_deployment(show_output=True)
    print(service.state)            # Healthy

The portal URL and token default to the environment variables TRIBUTARY_URL and TRIBUTARY_TOKEN. Only the
standard library is used, so the SDK installs anywhere a notebook runs.
"""

from tributary_sdk.client import WebserviceException
from tributary_sdk.webservice import (
    AksWebservice,
    AutoScaler,
    DeploymentConfiguration,
    InferenceConfig,
    LivenessProbeRequirements,
    LocalWebservice,
    Model,
    Webservice,
    Workspace,
)

__all__ = [
    "AksWebservice",
    "AutoScaler",
    "DeploymentConfiguration",
    "InferenceConfig",
    "LivenessProbeRequirements",
    "LocalWebservice",
    "Model",
    "Webservice",
    "WebserviceException",
    "Workspace",
]
