"""Celery tasks: thin. Each loads rows by id, claims its work, calls a driver or an action, records the outcome."""

from __future__ import annotations

import logging
import time

from celery import shared_task
from celery.utils.time import get_exponential_backoff_interval
from django.conf import settings

from deployments.compute import DesiredSpec, PermanentError, RolloutState, TransientError

log = logging.getLogger(__name__)


@shared_task(acks_late=False, ignore_result=False)
def ping() -> str:
    """Answers "pong": the health page uses it to prove that a worker is consuming the queue."""
    return "pong"


# Retries are counted by the update's own `attempts` (claims), not by Celery, so that a redelivery after a crash
# and a retry after a transient error draw on the same budget.
@shared_task(bind=True, acks_late=True, max_retries=None, ignore_result=True)
def apply_service_update(self, update_id: int) -> None:  # type: ignore[no-untyped-def]
    """Make a service's compute target match the desired spec stored on the update, or for a removal take the
    service off its target, and record how it ended."""
    from deployments import actions, drivers
    from deployments.models import ServiceUpdate

    update = actions.claim_update(update_id)
    if update is None:
        if actions.update_is_waiting(update_id):
            # Another update of the same service is rolling out: this one goes after it.
            raise self.retry(countdown=settings.ROLLOUT_POLL_SECONDS * 2)
        return
    spec = DesiredSpec.from_json(update.desired_spec)
    removal = update.kind == ServiceUpdate.Kind.REMOVE
    try:
        driver = drivers.driver_for(update.service)
        if removal:
            driver.remove(spec)
            actions.do_finish_removal(update)
            return
        driver.apply(spec)
        outcome = _wait_for_rollout(driver, spec)
    except PermanentError as exc:
        outcome = RolloutState("Failed", str(exc))
    except TransientError as exc:
        if update.attempts >= settings.UPDATE_MAX_ATTEMPTS:
            outcome = RolloutState("Failed", f"Gave up after {update.attempts} attempts: {exc}")
        else:
            log.warning("update %s: transient error, retrying: %s", update_id, exc)
            actions.release_update(update, str(exc))
            countdown = get_exponential_backoff_interval(2, update.attempts, 600, full_jitter=True)
            raise self.retry(countdown=countdown) from exc
    except Exception as exc:
        # A bug or an unexpected failure (a time limit, a broken spec): the update ends, it does not hang.
        log.exception("update %s: unexpected error", update_id)
        doing = "removing the service" if removal else "applying the update"
        outcome = RolloutState("Failed", f"Internal error while {doing} ({type(exc).__name__}).")
    actions.do_finish_update(update, outcome)


@shared_task(ignore_result=True)
def reconcile_updates() -> None:
    """Run by Celery beat: re-enqueue the updates that crashes left behind (see deployments.reconcile)."""
    from deployments.reconcile import reconcile_updates as reconcile

    requeued, failed = reconcile()
    if requeued or failed:
        log.warning("reconcile: re-enqueued %d stuck update(s); failed %d out of attempts", requeued, failed)


def _wait_for_rollout(driver: object, spec: DesiredSpec) -> RolloutState:
    """Poll the driver as `kubectl rollout status` does, until the rollout ends or its deadline passes."""
    deadline = time.monotonic() + settings.ROLLOUT_TIMEOUT_SECONDS
    while True:
        state = driver.rollout_state(spec)  # type: ignore[attr-defined]
        if state.finished:
            return state
        if time.monotonic() > deadline:
            waited = f"The rollout did not finish within {settings.ROLLOUT_TIMEOUT_SECONDS} s"
            return RolloutState("Failed", f"{waited}: {state.reason}" if state.reason else f"{waited}.")
        time.sleep(settings.ROLLOUT_POLL_SECONDS)
