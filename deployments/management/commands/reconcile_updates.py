"""Re-enqueue stuck service updates once (Celery beat also does it periodically: see deployments.reconcile)."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from deployments.reconcile import PENDING_LOST_SECONDS, reconcile_updates


class Command(BaseCommand):
    help = "Re-enqueue service updates stuck in Pending or in an expired Running; fail those out of attempts."

    def add_arguments(self, parser) -> None:  # type: ignore[no-untyped-def]
        parser.add_argument(
            "--pending-after",
            type=int,
            default=PENDING_LOST_SECONDS,
            help="Seconds after which a Pending update counts as lost.",
        )

    def handle(self, *args: object, pending_after: int, **options: object) -> None:
        requeued, failed = reconcile_updates(pending_after)
        self.stdout.write(f"Re-enqueued {requeued} update(s); failed {failed} that ran out of attempts.")
