from django.core.management.base import BaseCommand, CommandError

from deployments.health import run_checks


class Command(BaseCommand):
    help = "Check the database, Redis, a Celery worker and blob storage; exit non-zero if any fails."

    def handle(self, *args: object, **options: object) -> None:
        results = run_checks()
        for name, result in results.items():
            self.stdout.write(f"{name:10} {result['status']} ({result['ms']} ms)")
        failed = [name for name, result in results.items() if result["status"] != "ok"]
        if failed:
            raise CommandError(f"unhealthy: {', '.join(failed)}")
