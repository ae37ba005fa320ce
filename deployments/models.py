from __future__ import annotations

import re

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

# Workspace names, resource groups and subscription ids become segments of blob paths, so each is one safe segment.
SEGMENT = RegexValidator(
    re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,89}$"),
    "Use letters, digits, dots, dashes and underscores (up to 90), starting with a letter or digit.",
)


class Workspace(models.Model):
    """A team's space: its services, its members and its collected data (`<subscription>/<group>/<name>/...`)."""

    subscription_id = models.CharField(max_length=90, validators=[SEGMENT])
    resource_group = models.CharField(max_length=90, validators=[SEGMENT])
    name = models.CharField(max_length=90, validators=[SEGMENT])
    created = models.DateTimeField(auto_now_add=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership", related_name="workspaces")

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["subscription_id", "resource_group", "name"], name="workspace_unique_path")
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def path(self) -> str:
        """The workspace id of the legacy contract, and the first three segments of its blob paths."""
        return f"{self.subscription_id}/{self.resource_group}/{self.name}"


class Membership(models.Model):
    """A user's role in one workspace: Owners and Contributors change things, Readers only look."""

    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        CONTRIBUTOR = "contributor", "Contributor"
        READER = "reader", "Reader"

    workspace = models.ForeignKey(Workspace, models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.READER)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workspace", "user"], name="membership_unique_user")]

    def __str__(self) -> str:
        return f"{self.user} in {self.workspace} ({self.get_role_display()})"

    @property
    def can_write(self) -> bool:
        return self.role in (self.Role.OWNER, self.Role.CONTRIBUTOR)
