"""Create the first platform operator account, once, with a generated password."""

from __future__ import annotations

import secrets
import shlex
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Create the first admin account (username 'admin', random password) if no superuser exists."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin")
        parser.add_argument("--url", default="/admin/", help="where to log in (printed)")
        parser.add_argument(
            "--manage",
            default=".venv/bin/python manage.py",
            help="how to run manage.py from the checkout's root, for the printed commands",
        )

    def handle(self, *args: Any, username: str, url: str, manage: str, **options: Any) -> None:
        user_model = get_user_model()
        existing = user_model.objects.filter(is_superuser=True).order_by("date_joined").first()
        if existing is not None:
            name = existing.get_username()
            self.stdout.write(
                f"sluice: log in at {url} as '{name}' "
                f"(forgot the password? `{manage} changepassword {shlex.quote(name)}`)"
            )
            return
        password = secrets.token_urlsafe(18)
        user_model.objects.create_superuser(username=username, email="", password=password)
        self.stdout.write(
            "sluice: first admin account created -- this password is shown once:\n"
            f"  URL       {url}\n  username  {username}\n  password  {password}\n"
            f"  change it `{manage} changepassword {shlex.quote(username)}`"
        )
