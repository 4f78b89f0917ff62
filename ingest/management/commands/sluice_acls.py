"""Show how the cluster's Kafka ACLs differ from what the tenancy model implies; with
``--fix``, repair them (the same reconcile Celery beat runs every five minutes)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from ingest.acl_sync import acls_reconcile
from tenants.audit import Actor


class Command(BaseCommand):
    help = "Print ACL drift (missing and stale Sluice-managed Kafka ACLs); --fix repairs it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--fix", action="store_true", help="create missing and delete stale ACLs")

    def handle(self, *args: Any, fix: bool, **options: Any) -> None:
        report = acls_reconcile(fix=fix, actor=Actor.system("manage.py sluice_acls"))
        for line in report.missing:
            self.stdout.write(f"missing  {line}")
        for line in report.stale:
            self.stdout.write(f"stale    {line}")
        if not report.drift:
            self.stdout.write("no drift")
        elif fix:
            self.stdout.write(f"fixed: {len(report.created)} created, {len(report.deleted)} deleted")
        else:
            self.stdout.write("run with --fix to repair")
