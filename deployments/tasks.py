"""Celery tasks: thin; each loads rows by id and calls an action or a driver."""

from celery import shared_task


@shared_task(acks_late=False, ignore_result=False)
def ping() -> str:
    """Answers "pong": the health page uses it to prove that a worker is consuming the queue."""
    return "pong"
