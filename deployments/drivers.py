"""Which compute driver runs a service, built from its compute target and the portal's settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings

from deployments.compute import ComputeDriver
from deployments.models import ComputeTarget, Service
from scoring import config as runtime

if TYPE_CHECKING:
    from deployments.compute.local import LocalDriver


def driver_for(service: Service) -> ComputeDriver:
    target = service.compute_target
    if target.kind == ComputeTarget.Kind.KUBERNETES:
        from deployments.compute.kubernetes import KubernetesDriver

        return KubernetesDriver.from_kubeconfig(
            target.kubeconfig_path, context=target.kubeconfig_context, namespace=target.namespace or "default"
        )
    return local_driver(service.workspace.storage_secret)


def local_driver(storage_secret: str = "") -> LocalDriver:
    from deployments.compute.local import LocalDriver

    # On this machine the workspace's storage is the portal's own: the reference resolves to its setting.
    secrets = {storage_secret: settings.BLOB_CONNECTION_STRING} if storage_secret else {}
    telemetry = {}
    if settings.APPLICATIONINSIGHTS_CONNECTION_STRING:
        # A secret: not in the spec (stored with each update), given to the processes of services that have
        # "Enable AppInsights diagnostics" on (LocalDriver drops it for the others).
        telemetry[runtime.APPLICATIONINSIGHTS_CONNECTION_STRING] = settings.APPLICATIONINSIGHTS_CONNECTION_STRING
    return LocalDriver(state_dir=settings.VAR_DIR / "services", secrets=secrets, environ=telemetry)
