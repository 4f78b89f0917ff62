"""Release a deleted tenant's slug that is held because its Kafka topics were kept: checks
that no topic under ``iot.<slug>.`` is left on the cluster, deletes the schema subjects
those topics used, and lets the slug go once its reservation has run out (24 h after the
deletion; at once if that has passed)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from config.errors import SluiceError
from devices import registry
from ingest.kafka_admin import admin_client, topics_with_prefix
from tenants.audit import Actor
from tenants.models import RetiredSlug
from tenants.services import retired_slug_release


class Command(BaseCommand):
    help = "Release a deleted tenant's slug once its kept topics are gone (and delete its schema subjects)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")

    def handle(self, *args: Any, slug: str, **options: Any) -> None:
        if not RetiredSlug.objects.filter(slug=slug).exists():
            self.stdout.write(f"'{slug}' is not reserved: it is free (or a live tenant's)")
            return
        prefix = f"iot.{slug}."
        left = topics_with_prefix(admin_client(settings.SLUICE_RUNTIME), prefix)
        try:
            if not left:
                deleted = registry.subjects_delete(prefix=prefix)
                self.stdout.write(f"deleted {len(deleted)} schema subject(s) under {prefix}")
            retired = retired_slug_release(actor=Actor.system("manage.py sluice_release_slug"), slug=slug,
                                           topics_left=left)  # fmt: skip
        except SluiceError as error:
            raise CommandError(error.message) from None
        if retired is None:
            self.stdout.write(f"'{slug}' is free")
        else:
            self.stdout.write(f"'{slug}' is free from {retired.reserved_until:%Y-%m-%d %H:%M} UTC")
