"""Finishing what crashes left behind: updates whose worker died, and updates whose task never reached Redis.

Celery beat runs `tasks.reconcile_updates` every RECONCILE_INTERVAL_SECONDS (`make run` embeds beat in its worker;
docker-compose runs a `beat` service); `python manage.py reconcile_updates` does the same once. It only
re-enqueues: the task's claim decides who runs an update, so running this while workers are busy, or twice at
once, does no harm.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from deployments.models import ServiceUpdate

# The task's longest retry backoff is 600 s: a handed-back update untouched for much longer lost its retry.
RETRY_OVERDUE = timedelta(minutes=15)
# A Pending update that no worker claimed this long after it was created lost its task on the way to the broker.
PENDING_LOST_SECONDS = 60


def reconcile_updates(pending_after: int = PENDING_LOST_SECONDS) -> tuple[int, int]:
    """Re-enqueue stuck updates and fail those out of attempts; returns (re-enqueued, failed)."""
    from deployments import actions, tasks

    now = timezone.now()
    stuck = ServiceUpdate.objects.filter(
        # Never claimed: its task was lost on the way to the broker.
        Q(status=ServiceUpdate.Status.PENDING, attempts=0, created__lt=now - timedelta(seconds=pending_after))
        # Handed back after a transient error: its retry is scheduled; lost only if long overdue.
        | Q(status=ServiceUpdate.Status.PENDING, attempts__gt=0, started__lt=now - RETRY_OVERDUE)
        # Its worker died (or hangs) past the lease.
        | Q(status=ServiceUpdate.Status.RUNNING, lease_until__lt=now)
    ).select_related("service__workspace")
    requeued = failed = 0
    for update in stuck:
        if update.attempts >= settings.UPDATE_MAX_ATTEMPTS:
            reason = f"Gave up after {update.attempts} attempts: the worker stopped before finishing."
            failed += actions.do_fail_abandoned_update(update, reason)
        else:
            tasks.apply_service_update.delay(update.pk)
            requeued += 1
    return requeued, failed
