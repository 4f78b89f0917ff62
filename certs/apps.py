from django.apps import AppConfig


class CertsConfig(AppConfig):
    name = "certs"
    verbose_name = "Certificates"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported here, not at module level: models can be imported only once every app is
        # loaded.  A tenant's CA and a device's certificates follow what tenants and devices
        # do; they announce it through their hooks (config.hooks) and never import certs.
        from certs import services
        from devices import services as device_services
        from tenants import services as tenant_services

        tenant_services.tenant_created.connect(services.tenant_ca_create)
        tenant_services.tenant_deleting.connect(services.tenant_cas_revoke)
        device_services.device_certificates_withdrawn.connect(services.device_certificates_revoke)
        device_services.group_certificates_withdrawn.connect(services.group_certificates_revoke)
        device_services.consumer_certificates_withdrawn.connect(services.consumer_certificates_revoke)
