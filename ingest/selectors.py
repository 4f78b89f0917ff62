"""Reads for the pages around ingest: what a device's first POST should carry."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from config.errors import SchemaValidationFailed, SluiceError
from ingest import records
from ingest.registry import latest_schema

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecordSample:
    """A record for ``subject``'s latest schema, checked by ingest's own validator, or the
    reason there is none (``note``, one sentence for the operator)."""

    subject: str
    record: dict[str, Any] | None = None
    version: int | None = None
    note: str = ""

    @property
    def text(self) -> str:
        """The record as a device would send it, indented for a page to show."""
        return json.dumps(self.record, indent=2)


def record_sample_for(*, subject: str) -> RecordSample:
    """A sample record that ingest would accept under ``subject`` right now, from the
    registry's latest version (the cached lookup ingest itself uses).

    Never raises: the onboarding page that shows it also shows a private key exactly once,
    so a registry outage or a schema no simple rule fits must cost the sample, not the page."""
    try:
        schema = latest_schema(subject)
        record = records.sample_record(schema_str=schema.schema_str, schema_type=schema.schema_type)
        # The sample is shown as "works as is": hold it to the same check ingest applies.
        records.validate(records.Parsed(records=[record], batch=False), schema)
    except SchemaValidationFailed:
        return RecordSample(subject, note="No simple record fits this schema, so there is no sample to copy.")
    except (SluiceError, records.NoSample) as exc:
        return RecordSample(subject, note=str(getattr(exc, "message", exc)))
    except Exception:
        logger.exception("building a sample record for subject %s failed", subject)
        return RecordSample(subject, note="A sample record could not be built for this schema.")
    return RecordSample(subject, record=record, version=schema.version)
