from django.core.management.base import BaseCommand

from deployments import actions
from deployments.models import ComputeTarget, Service


class Command(BaseCommand):
    help = "Apply every service of this machine's compute targets again (make run does, as it starts)."

    def handle(self, *args: object, **options: object) -> None:
        services = Service.objects.filter(compute_target__kind=ComputeTarget.Kind.LOCAL).select_related("workspace")
        # A service being deleted is not started again: its removal is still queued (or re-enqueued by beat).
        services = services.exclude(state=Service.State.DELETING)
        started = 0
        for service in services:
            try:
                actions.do_redeploy_service(service, acting_user=None, reason="Started with the portal on this machine")
            except actions.BeingDeleted:
                continue  # deleted since the query: the others still start
            started += 1
        self.stdout.write(f"Starting {started} local service(s).")
