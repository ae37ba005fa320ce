"""Creates the demo workspace and a superuser who owns it, so that a new user can log in at once.

The superuser comes from DJANGO_SUPERUSER_USERNAME and DJANGO_SUPERUSER_PASSWORD, as `createsuperuser --noinput`
reads them. Without a password, a new user gets a generated one, printed once; there is no fixed default.
"""

from __future__ import annotations

import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from deployments.models import Membership, Workspace

DEMO_WORKSPACE = {"subscription_id": "demo-subscription", "resource_group": "demo-rg", "name": "demo"}


class Command(BaseCommand):
    help = "Create the demo workspace and a superuser who owns it (idempotent)."

    def handle(self, *args: object, **options: object) -> None:
        username = os.environ.get("DJANGO_SUPERUSER_USERNAME") or "admin"
        password = os.environ.get("DJANGO_SUPERUSER_PASSWORD") or ""
        with transaction.atomic():
            workspace, _ = Workspace.objects.get_or_create(**DEMO_WORKSPACE)
            user, created = get_user_model().objects.get_or_create(
                username=username, defaults={"is_staff": True, "is_superuser": True}
            )
            generated = created and not password
            if generated:
                password = secrets.token_urlsafe(12)
            if password:
                user.set_password(password)
                user.is_staff = user.is_superuser = True
                user.save()
            Membership.objects.update_or_create(
                workspace=workspace, user=user, defaults={"role": Membership.Role.OWNER}
            )
        if generated:
            self.stdout.write(f"Log in as {username} with the generated password: {password}")
        elif password:
            self.stdout.write(f"Log in as {username} with the password from DJANGO_SUPERUSER_PASSWORD.")
        else:
            self.stdout.write(
                f"Log in as {username} with the password printed when it was created "
                "(set DJANGO_SUPERUSER_PASSWORD to choose a new one)."
            )
