from django.urls import path

from deployments import api, views

app_name = "deployments"

workspace_urls = [
    path("w/<int:workspace_id>/deployments/", views.service_list, name="service-list"),
    path("w/<int:workspace_id>/deployments/new/", views.service_create, name="service-create"),
    path("w/<int:workspace_id>/audit/", views.audit_log, name="audit-log"),
]

service_urls = [
    path("services/<int:service_id>/", views.service_detail, name="service-detail"),
    path("services/<int:service_id>/status/", views.service_status, name="service-status"),
    path("services/<int:service_id>/edit/", views.service_edit, name="service-edit"),
]

api_urls = [
    path("api/v1/workspaces/", api.workspaces, name="api-workspaces"),
    path("api/v1/workspaces/<int:workspace_id>/services/", api.services, name="api-services"),
    path("api/v1/workspaces/<int:workspace_id>/services/<str:name>/", api.service, name="api-service"),
    path("api/v1/updates/<int:update_id>/", api.update, name="api-update"),
]

urlpatterns = [
    path("", views.home, name="home"),
    path("health/", views.health, name="health"),
    path("deployments/", views.deployments_redirect, name="deployments"),
    *workspace_urls,
    *service_urls,
    *api_urls,
]
