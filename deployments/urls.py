from django.urls import path

from deployments import api, data_views, views

app_name = "deployments"

workspace_urls = [
    path("w/<int:workspace_id>/deployments/", views.service_list, name="service-list"),
    path("w/<int:workspace_id>/deployments/new/", views.service_create, name="service-create"),
    path("w/<int:workspace_id>/audit/", views.audit_log, name="audit-log"),
    path("w/<int:workspace_id>/members/", views.workspace_members, name="workspace-members"),
    path(
        "w/<int:workspace_id>/members/<int:member_id>/role/", views.workspace_member_role, name="workspace-member-role"
    ),
    path(
        "w/<int:workspace_id>/members/<int:member_id>/remove/",
        views.workspace_member_remove,
        name="workspace-member-remove",
    ),
    path("w/<int:workspace_id>/data/", data_views.data_browser, name="data-browser"),
    path("w/<int:workspace_id>/data/preview/", data_views.data_preview, name="data-preview"),
    path("w/<int:workspace_id>/data/download/", data_views.data_download, name="data-download"),
]

service_urls = [
    path("services/<int:service_id>/", views.service_detail, name="service-detail"),
    path("services/<int:service_id>/status/", views.service_status, name="service-status"),
    path("services/<int:service_id>/runtime/", views.service_runtime, name="service-runtime"),
    path("services/<int:service_id>/logs/", views.service_logs, name="service-logs"),
    path("services/<int:service_id>/edit/", views.service_edit, name="service-edit"),
    path("services/<int:service_id>/keys/", views.service_keys, name="service-keys"),
    path("services/<int:service_id>/delete/", views.service_delete, name="service-delete"),
    path("services/<int:service_id>/data/", data_views.service_data, name="service-data"),
    path("services/<int:service_id>/data/summary/", data_views.service_data_summary, name="service-data-summary"),
    path("services/<int:service_id>/data/join/", data_views.service_data_join, name="service-data-join"),
]

api_urls = [
    path("api/v1/workspaces/", api.workspaces, name="api-workspaces"),
    path("api/v1/workspaces/<int:workspace_id>/services/", api.services, name="api-services"),
    path("api/v1/workspaces/<int:workspace_id>/services/<str:name>/", api.service, name="api-service"),
    path("api/v1/workspaces/<int:workspace_id>/services/<str:name>/logs/", api.service_logs, name="api-service-logs"),
    path("api/v1/workspaces/<int:workspace_id>/services/<str:name>/keys/", api.service_keys, name="api-service-keys"),
    path("api/v1/updates/<int:update_id>/", api.update, name="api-update"),
]

urlpatterns = [
    path("", views.home, name="home"),
    path("account/tokens/", views.api_tokens, name="api-tokens"),
    path("account/tokens/<int:token_id>/revoke/", views.api_token_revoke, name="api-token-revoke"),
    path("health/", views.health, name="health"),
    path("deployments/", views.deployments_redirect, name="deployments"),
    *workspace_urls,
    *service_urls,
    *api_urls,
]
