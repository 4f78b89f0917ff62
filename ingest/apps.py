from django.apps import AppConfig


class IngestConfig(AppConfig):
    name = "ingest"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported here, not at module level: models can be imported only once every app is
        # loaded.  Ingest owns everything Kafka; the lower apps announce changes through
        # their hooks (config.hooks) and never import ingest.
        from devices import services as device_services
        from ingest import receivers
        from tenants import rights
        from tenants import services as tenant_services

        rights.kafka_sync.connect(receivers.rights_kafka_sync)
        tenant_services.tenant_created.connect(receivers.tenant_dlq_queue)
        tenant_services.tenant_deleted.connect(receivers.tenant_topics_queue_deletion)
        device_services.stream_saved.connect(receivers.stream_queue_provision)
        device_services.stream_deleted.connect(receivers.stream_queue_deletion)
