from django.contrib import admin

from deployments.models import Membership, Workspace


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Workspace)
class WorkspaceAdmin(admin.ModelAdmin):
    list_display = ["name", "resource_group", "subscription_id", "created"]
    search_fields = ["name", "resource_group", "subscription_id"]
    inlines = [MembershipInline]
