"""Forms of the operator onboarding flow.  They parse what the browser sent into the types
the services take; the domain's rules (slug shapes, quotas, uniqueness) stay in the models
and services, whose errors ``add_service_error`` puts back on the form field they name."""

from __future__ import annotations

from typing import Any, cast

from django import forms
from django.db.models import QuerySet

from config.errors import SluiceError
from devices.forms import LabelsField
from devices.models import DEVICE_ID_RULE, DeviceGroup, Stream, default_partitions
from devices.registry import AVRO, JSON, PROTOBUF
from tenants.models import Tenant

SLUG_HELP = "Lowercase letters, digits and hyphens."
TOPIC_POLICY_CHOICES = [
    (Tenant.TopicPolicy.DELETE, "Delete them with the tenant"),
    (Tenant.TopicPolicy.KEEP, "Keep them after the tenant is deleted"),
]
AVRO_EXAMPLE = """{
  "type": "record",
  "name": "Reading",
  "namespace": "com.example.telemetry",
  "fields": [
    {"name": "device_id", "type": "string"},
    {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "celsius", "type": "double"}
  ]
}"""


def add_service_error(form: forms.Form, error: SluiceError) -> None:
    """Show a service's error on the form: a field pointer such as ``/slug`` goes to the form
    field of that name, anything else (no pointer, ``/``, nested, or a field this form does
    not have) to the errors above the form."""
    if not error.fields:
        form.add_error(None, error.message)
        return
    for item in error.fields:
        name = item.get("pointer", "").removeprefix("/")
        message = item.get("message") or error.message
        form.add_error(name if name in form.fields else None, message)


def _default(model: Any, field: str) -> Any:
    default = model._meta.get_field(field).default
    return default() if callable(default) else default


class TenantForm(forms.Form):
    slug = forms.CharField(
        max_length=40, help_text=f"{SLUG_HELP} Used in topic names (iot.<slug>.…) and Kafka principals."
    )
    name = forms.CharField(max_length=200, help_text="The customer's display name.")
    max_devices = forms.IntegerField(initial=_default(Tenant, "max_devices"), help_text="Devices this tenant may have.")
    max_records_per_second = forms.IntegerField(
        initial=_default(Tenant, "max_records_per_second"), help_text="Ingest rate limit across all devices."
    )
    max_bytes_per_second = forms.IntegerField(
        initial=_default(Tenant, "max_bytes_per_second"), help_text="Ingest bandwidth limit; 10485760 is 10 MiB/s."
    )
    topic_deletion_policy = forms.ChoiceField(
        choices=TOPIC_POLICY_CHOICES,
        initial=_default(Tenant, "topic_deletion_policy"),
        label="The tenant's Kafka topics",
        help_text="What happens to them when the tenant is deleted.",
    )


class TenantAdminForm(forms.Form):
    username = forms.CharField(max_length=150, help_text="Letters, digits and @ . + - _ only.")
    email = forms.EmailField(required=False, help_text="Optional; for your records.")


class StreamForm(forms.Form):
    region = forms.CharField(max_length=40, initial="eu", help_text=f"{SLUG_HELP} For example eu or us-east.")
    type = forms.CharField(
        max_length=40, label="Data type", help_text=f"{SLUG_HELP} For example temperature or vibration."
    )
    retention_class = forms.ChoiceField(
        choices=Stream.RetentionClass.choices,
        initial=Stream.RetentionClass.RAW,
        help_text="Raw keeps 6 hours, enriched 7 days (and adds .enriched to the topic name).",
    )
    custom_retention_hours = forms.IntegerField(
        required=False, label="Custom retention (hours)", help_text="Only for the custom retention class."
    )
    partitions = forms.IntegerField(help_text="Kafka partitions; can grow later, never shrink.")
    schema_type = forms.ChoiceField(choices=[(AVRO, "Avro"), (JSON, "JSON Schema"), (PROTOBUF, "Protobuf (.proto)")],
                                    initial=AVRO, label="Schema type")  # fmt: skip
    schema = forms.CharField(
        strip=False,
        widget=forms.Textarea(attrs={"rows": 12, "spellcheck": "false", "placeholder": AVRO_EXAMPLE}),
        help_text="The value schema of the topic's records, registered under the subject <topic>-value.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Read at request time: the default comes from the runtime settings.
        self.fields["partitions"].initial = default_partitions()


class StreamChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        return str(obj.topic)


class StreamsChoiceField(forms.ModelMultipleChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        return str(obj.topic)


class GroupForm(forms.Form):
    slug = forms.CharField(max_length=40, help_text=f"{SLUG_HELP} Part of the group's Kafka principal.")
    name = forms.CharField(max_length=200, required=False)
    region = forms.CharField(max_length=40, required=False, help_text="The stream's region; empty takes it.")
    device_type = forms.CharField(max_length=40, required=False, help_text="The stream's type; empty takes it.")
    stream = StreamChoiceField(queryset=Stream.objects.none(), empty_label=None, help_text="Where its devices write.")
    schema_subject = forms.CharField(max_length=255, help_text="The registry subject records are validated against.")
    credential_policy = forms.ChoiceField(
        choices=DeviceGroup.CredentialPolicy.choices,
        initial=DeviceGroup.CredentialPolicy.MTLS,
        help_text="How the group's devices authenticate.",
    )
    kafka_direct = forms.BooleanField(
        required=False, label="Kafka-direct access", help_text="Its credentials may also produce to Kafka directly."
    )

    def __init__(self, *args: Any, streams: QuerySet[Stream], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(StreamChoiceField, self.fields["stream"]).queryset = streams


class DeviceForm(forms.Form):
    device_id = forms.CharField(max_length=128, label="Device ID", help_text=f"{DEVICE_ID_RULE}.")
    labels = LabelsField()


class ConsumerForm(forms.Form):
    """A consumer of the tenant: a backend that reads its streams from Kafka with its own
    credentials (``devices.services.consumer_create``).  On the summary page beside the
    device's credentials form, so its fields are prefixed (``consumer-slug``, ...)."""

    PREFIX = "consumer"

    slug = forms.CharField(max_length=40, help_text=f"{SLUG_HELP} For example analytics; part of its Kafka principal.")
    name = forms.CharField(max_length=200, required=False, help_text="What it is, e.g. Analytics backend.")
    all_streams = forms.BooleanField(
        required=False, initial=True, label="Every stream",
        help_text="Reads every stream of the tenant, present and future. Untick it to choose streams below.",
    )  # fmt: skip
    streams = StreamsChoiceField(
        queryset=Stream.objects.none(), required=False, widget=forms.CheckboxSelectMultiple,
        label="Only these streams", help_text="When not every stream.",
    )  # fmt: skip
    dead_letters = forms.BooleanField(
        required=False, label="Dead letters too", help_text="Also reads the tenant's dead-letter topic."
    )

    def __init__(self, *args: Any, streams: QuerySet[Stream], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(StreamsChoiceField, self.fields["streams"]).queryset = streams


class CredentialsForm(forms.Form):
    passphrase = forms.CharField(
        min_length=8,
        max_length=256,
        widget=forms.PasswordInput(render_value=False),
        help_text="Protects the PKCS#12 bundle; at least 8 characters.",
    )
