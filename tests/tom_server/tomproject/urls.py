"""URLs of the pipekit test TOM: everything TOM Toolkit serves, including ``/api/``."""
from django.urls import include, path

urlpatterns = [
    path("", include("tom_common.urls")),
]
