"""django-stubs' mypy plugin, told that Sluice installs ``django.contrib.auth``.

The plugin decides whether contrib.auth is installed by looking for the literal string
"django.contrib.auth" in INSTALLED_APPS.  Sluice installs it through its own AppConfig
(``config.console.SluiceAuthConfig``, for the console's sentence-case name), so without this
``get_user_model()`` and ``request.user`` would be typed as ``AbstractBaseUser`` instead of the
configured ``AUTH_USER_MODEL``.  The answer comes from Django's app registry instead.
"""

from __future__ import annotations

from mypy.options import Options
from mypy_django_plugin.main import NewSemanalDjangoPlugin


class SluiceDjangoPlugin(NewSemanalDjangoPlugin):
    def __init__(self, options: Options) -> None:
        super().__init__(options)
        context = self.django_context
        # is_contrib_auth_installed is a cached_property: seed the cache with the registry's answer.
        context.__dict__["is_contrib_auth_installed"] = context.apps_registry.is_installed("django.contrib.auth")


def plugin(_version: str) -> type[NewSemanalDjangoPlugin]:
    return SluiceDjangoPlugin
