"""Hooks: how a lower layer makes a higher one act without importing it.

The apps stand in one order (README, "Where things are"): ``tenants`` < ``devices`` <
``certs`` < ``ingest``.  Where a change in a lower app must cause work in a higher one (a
new tenant needs its CA from ``certs`` and its DLQ topic from ``ingest``; a rights change
needs ``ingest``'s Kafka ACL sync), the lower app declares a ``Hook`` beside the code that
fires it, and the higher app connects a receiver in its ``AppConfig.ready()``.  The call
stays explicit (one named hook, fired at one place, receivers listed in ``apps.py``) and a
hook that nobody connected fails loudly instead of silently skipping the work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.exceptions import ImproperlyConfigured


class Hook:
    """One point where a lower layer hands work to the layers above it.  Receivers run in the
    order they were connected, synchronously, inside the caller's transaction (a receiver
    that talks to the network queues its work with ``transaction.on_commit``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._receivers: list[Callable[..., Any]] = []

    def connect(self, receiver: Callable[..., Any]) -> None:
        if receiver not in self._receivers:
            self._receivers.append(receiver)

    def __call__(self, **kwargs: Any) -> None:
        if not self._receivers:
            raise ImproperlyConfigured(f"No app connected a receiver to the hook '{self.name}'.")
        for receiver in self._receivers:
            receiver(**kwargs)

    def __repr__(self) -> str:
        return f"Hook({self.name!r})"
