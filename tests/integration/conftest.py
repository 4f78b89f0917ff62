"""Fixtures the integration tests share: a provisioned device with a certificate
(``make_sender``) and one with an OAuth client (``make_device``)."""

from tests.integration.test_ingest import make_sender
from tests.integration.test_ingest_bearer import make_device

__all__ = ["make_device", "make_sender"]
