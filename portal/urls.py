from django.contrib import admin
from django.urls import include, path

from deployments.login import ThrottledLoginView

urlpatterns = [
    # Both log-in pages count wrong passwords (the admin's would otherwise be a way around the limit).
    path("admin/login/", ThrottledLoginView.as_view(), name="admin-login"),
    path("admin/", admin.site.urls),
    path("accounts/login/", ThrottledLoginView.as_view(), name="login"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("deployments.urls")),
]
