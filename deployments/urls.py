from django.urls import path

from deployments import views

app_name = "deployments"

urlpatterns = [
    path("", views.home, name="home"),
    path("health/", views.health, name="health"),
    path("deployments/", views.deployments_redirect, name="deployments"),
    path("w/<int:workspace_id>/deployments/", views.service_list, name="service-list"),
]
