"""Creates the demo workspace, a superuser who owns it, and a demo service on this machine.

The superuser comes from DJANGO_SUPERUSER_USERNAME and DJANGO_SUPERUSER_PASSWORD, as `createsuperuser --noinput`
reads them. Without a password, a new user gets a generated one, printed once; there is no fixed default.
The demo service serves examples/score.py with model data collection on, deployed through the usual task path.
"""

from __future__ import annotations

import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from deployments import actions
from deployments.models import ComputeTarget, Membership, Model, Service, Workspace

DEMO_SERVICE = "demo-scoring"
EXAMPLES = settings.BASE_DIR / "examples"


class Command(BaseCommand):
    help = "Create the demo workspace, a superuser who owns it, and a demo service on this machine (idempotent)."

    def handle(self, *args: object, **options: object) -> None:
        username = os.environ.get("DJANGO_SUPERUSER_USERNAME") or "admin"
        password = os.environ.get("DJANGO_SUPERUSER_PASSWORD") or ""
        with transaction.atomic():
            workspace, _ = Workspace.objects.get_or_create(
                subscription_id="demo-subscription", resource_group="demo-rg", name="demo"
            )
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
            self._demo_service(workspace, user)
        if generated:
            self.stdout.write(f"Log in as {username} with the generated password: {password}")
        elif password:
            self.stdout.write(f"Log in as {username} with the password from DJANGO_SUPERUSER_PASSWORD.")
        else:
            self.stdout.write(
                f"Log in as {username} with the password printed when it was created "
                "(set DJANGO_SUPERUSER_PASSWORD to choose a new one)."
            )

    def _demo_service(self, workspace: Workspace, user: object) -> None:
        target, _ = ComputeTarget.objects.get_or_create(
            workspace=workspace, name="local", defaults={"kind": ComputeTarget.Kind.LOCAL}
        )
        model, _ = Model.objects.get_or_create(
            workspace=workspace,
            name="sample-model",
            version=1,
            defaults={"path": str(EXAMPLES / "sample_model"), "description": "Linear model of examples/train.py"},
        )
        if not Service.objects.filter(workspace=workspace, name=DEMO_SERVICE).exists():
            actions.do_deploy_service(
                workspace,
                name=DEMO_SERVICE,
                compute_target=target,
                models=[model],
                acting_user=user,
                entry_script=str(EXAMPLES / "score.py"),
                collect_model_data=True,
                reason="Demo service of make run",
            )
