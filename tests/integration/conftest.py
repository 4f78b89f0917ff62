"""Fixtures the integration tests share: a provisioned device with a certificate
(``make_sender``), one with an OAuth client (``make_device``), and a separate Sluice on a
3-broker quorum (``cluster_platform``, tests/integration/cluster.py)."""

from tests.integration.cluster import cluster_platform
from tests.integration.test_ingest import make_sender
from tests.integration.test_ingest_bearer import make_device

__all__ = ["cluster_platform", "make_device", "make_sender"]
