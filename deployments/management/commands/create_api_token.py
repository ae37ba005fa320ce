from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from deployments.actions import do_issue_api_token


class Command(BaseCommand):
    help = "Issue an API token for a user (for the REST API and the Python SDK); it is printed once."

    def add_arguments(self, parser) -> None:  # type: ignore[no-untyped-def]
        parser.add_argument("username")
        parser.add_argument("--name", default="cli", help="A label to tell the user's tokens apart.")

    def handle(self, *args: object, username: str, name: str, **options: object) -> None:
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user called {username!r}.")
        _, key = do_issue_api_token(user, name)
        self.stdout.write(key)
