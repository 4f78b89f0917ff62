from django.apps import AppConfig


class CertsConfig(AppConfig):
    name = "certs"
    verbose_name = "Certificates"
    default_auto_field = "django.db.models.BigAutoField"
