"""ASGI entry point, served behind nginx on Unix sockets: the device data plane
(``/ingest/``, a plain ASGI app: ``ingest.app``) beside Django (everything else).

nginx sends ``/ingest/`` to the ingest workers and everything else to the web workers;
both run this same application, so either can answer any path (a request for a refused
client certificate reaches the web workers through nginx's error page, for instance)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_application = get_asgi_application()

# After Django is set up: the ingest app reads models and settings.
from ingest.app import PREFIX, IngestApp  # noqa: E402

ingest_application = IngestApp()


async def application(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] == "lifespan":
        # Django's handler takes no lifespan events; the ingest app closes its producer.
        return await ingest_application(scope, receive, send)
    if scope["type"] == "http" and scope["path"].startswith(PREFIX):
        return await ingest_application(scope, receive, send)
    return await django_application(scope, receive, send)
