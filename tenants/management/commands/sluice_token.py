"""Create an API token for a user from the command line (the secret is printed once)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from config.errors import SluiceError
from tenants.audit import Actor
from tenants.services import api_token_create


class Command(BaseCommand):
    help = "Create an API token (Authorization: Bearer ...) for USER; prints the secret once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("user")
        parser.add_argument("--name", default="cli")

    def handle(self, *args: Any, user: str, name: str, **options: Any) -> None:
        account = get_user_model().objects.filter(username=user).first()
        if account is None:
            raise CommandError(f"no user '{user}'")
        try:
            _, secret = api_token_create(actor=Actor.system("manage.py"), user=account, name=name)
        except SluiceError as error:
            raise CommandError(error.message) from None
        self.stdout.write(secret)
