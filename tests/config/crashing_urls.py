"""The real URL map plus one page under /api/ and one in the console that crash: only for
tests/config/test_error_pages.py (Django looks its handler500 up on the root URL map)."""

from django.http import HttpRequest, HttpResponse
from django.urls import path

from config import urls


def crash(_request: HttpRequest) -> HttpResponse:
    raise RuntimeError("a bug")


urlpatterns = [path("api/v1/crash/", crash), path("admin/crash/", crash), *urls.urlpatterns]
handler400 = urls.handler400
handler403 = urls.handler403
handler404 = urls.handler404
handler500 = urls.handler500
