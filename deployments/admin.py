from typing import Any

from django.contrib import admin
from django.forms import BaseInlineFormSet, ModelForm
from django.http import HttpRequest

from deployments import actions
from deployments.models import (
    AuditEvent,
    ComputeTarget,
    FailedLogin,
    Membership,
    Model,
    Service,
    ServiceUpdate,
    Workspace,
)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Workspace)
class WorkspaceAdmin(admin.ModelAdmin):
    list_display = ["name", "resource_group", "subscription_id", "created"]
    search_fields = ["name", "resource_group", "subscription_id"]
    inlines = [MembershipInline]

    def save_formset(self, request: HttpRequest, form: ModelForm, formset: BaseInlineFormSet, change: bool) -> None:
        if formset.model is not Membership:
            super().save_formset(request, form, formset, change)
            return
        # Through the actions, so that each member added, re-roled or removed here has its audit row (the admin
        # runs the whole change form in one transaction).
        saved = formset.save(commit=False)
        for membership in formset.deleted_objects:
            actions.do_staff_remove_member(membership, acting_user=request.user)
        for membership in saved:
            actions.do_staff_save_member(membership, acting_user=request.user)


@admin.register(ComputeTarget)
class ComputeTargetAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "workspace", "namespace"]
    list_filter = ["kind"]


@admin.register(Model)
class ModelAdmin(admin.ModelAdmin):
    list_display = ["name", "version", "workspace", "path", "created"]
    search_fields = ["name"]


@admin.register(Service)
class ServiceAdmin(admin.ModelAdmin):
    """Read-only: services change and are deleted on their page in the portal, so that every change is audited
    and applied (deleting the row here would leave its processes or Deployment running, unmanaged)."""

    list_display = ["name", "workspace", "state", "compute_target", "collect_model_data", "enable_app_insights"]
    list_filter = ["state", "collect_model_data", "enable_app_insights"]
    search_fields = ["name"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records of what happened: nobody adds, changes or deletes them, superusers included."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ["created", "actor_name", "action", "target_repr", "workspace"]
    list_filter = ["action", "workspace", "created"]
    search_fields = ["target_repr", "actor_name"]
    date_hierarchy = "created"


@admin.register(ServiceUpdate)
class ServiceUpdateAdmin(ReadOnlyAdmin):
    list_display = ["id", "service", "status", "attempts", "created", "finished"]
    list_filter = ["status", "created"]
    search_fields = ["service__name"]


@admin.register(FailedLogin)
class FailedLoginAdmin(admin.ModelAdmin):
    """Wrong passwords, counted against guessing (deployments.login): deleting a username's rows lets it log in
    again at once."""

    list_display = ["username", "ip", "created"]
    search_fields = ["username", "ip"]
    date_hierarchy = "created"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
