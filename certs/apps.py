from django.apps import AppConfig


class CertsConfig(AppConfig):
    name = "certs"
    default_auto_field = "django.db.models.BigAutoField"
