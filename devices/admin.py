"""The Sluice console (Django admin): streams, device groups, devices and consumers.

Scoping and permissions come from ``TenantScopedAdmin``; every write calls a service, so
streams are provisioned in Kafka after the admin's transaction commits."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin
from django.contrib.admin.widgets import RelatedFieldWidgetWrapper
from django.db.models import Count, Q, QuerySet
from django.db.models.functions import Now
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join
from django.utils.text import Truncator

from config.errors import SluiceError
from devices import registry, selectors, services
from devices.forms import LabelsField
from devices.models import Consumer, Device, DeviceGroup, Stream
from tenants.admin_scoping import ServiceForm, ServiceRejected, TenantScopedAdmin, status_badge
from tenants.audit import Actor

if TYPE_CHECKING:
    # django-stubs' names for what get_fields and get_fieldsets return.
    from django.contrib.admin.options import _FieldGroups as FieldGroups
    from django.contrib.admin.options import _FieldsetSpec as FieldsetSpec

TENANT_FILTER = ("tenant", admin.RelatedOnlyFieldListFilter)

SCHEMA_TYPE_LABELS = {registry.JSON: "JSON Schema", registry.AVRO: "Avro", registry.PROTOBUF: "Protobuf"}
SCHEMA_VERSIONS_SHOWN = 20
PRE_STYLE = "white-space: pre-wrap; background: #f6f8fa; padding: .5em; max-height: 24em; overflow: auto; margin: 0"


class StreamForm(ServiceForm):
    """The stream's form, plus a new version of its schema (registered through the same
    service as the REST API, so the registry's verdict comes back as an error on ``schema``)."""

    schema_type = forms.ChoiceField(
        label="Schema type", required=False, choices=list(SCHEMA_TYPE_LABELS.items()),
        help_text="A stream keeps the type of its first version. Protobuf: a .proto whose first message is the "
        "record type.",
    )  # fmt: skip
    schema = forms.CharField(
        label="New schema version", required=False, strip=False, max_length=registry.MAX_SCHEMA_CHARS,
        widget=forms.Textarea(attrs={"rows": 12, "cols": 90, "spellcheck": "false",
                                     "style": "font-family: monospace"}),
        help_text="The schema's text (a JSON Schema, an Avro schema in its JSON form, or a .proto). Left empty, "
        "the schema stays as it is. The registry's compatibility rule (BACKWARD) decides whether it may follow "
        "the latest.",
    )  # fmt: skip

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "schema_type" in self.fields and self.instance.pk:
            state = _schema_state(self.instance)
            if state.versions:
                self.fields["schema_type"].initial = state.versions[0].schema_type


class _SchemaState:
    """A stream's schema versions as the page shows them, read once per request."""

    def __init__(self, stream: Stream) -> None:
        self.versions: list[selectors.SchemaVersion] = []
        self.total = 0
        self.error = ""
        try:
            found = selectors.stream_schema_versions(stream=stream)
            self.total = len(found)
            self.versions = found[:SCHEMA_VERSIONS_SHOWN]
        except SluiceError as exc:
            self.error = exc.message


def _schema_state(stream: Stream) -> _SchemaState:
    state = getattr(stream, "_sluice_schema_state", None)
    if state is None:
        state = _SchemaState(stream)
        stream._sluice_schema_state = state  # type: ignore[attr-defined]
    return state


@admin.register(Stream)
class StreamAdmin(TenantScopedAdmin[Stream]):
    form = StreamForm
    immutable_fields = ("tenant", "region", "type", "retention_class", "replication_factor")
    list_display = ("kafka_topic", "tenant", "status_display", "partitions", "replication_factor", "retention_class",
                    "compression", "provisioned_at", "error_summary")  # fmt: skip
    list_filter = ("status", "retention_class", TENANT_FILTER)
    search_fields = ("tenant__slug", "region", "type", "last_error")
    list_select_related = ("tenant",)
    readonly_fields = ("kafka_topic", "status_display", "last_error", "provisioned_at", "created_at", "updated_at",
                       "schema_current", "schema_versions")  # fmt: skip
    SCHEMA_INPUT = ("schema_type", "schema")

    def get_fieldsets(self, request: HttpRequest, obj: Stream | None = None) -> FieldsetSpec:
        topic = ("retention_class", "custom_retention_hours", "partitions", "replication_factor", "compression",
                 "cleanup_policy")  # fmt: skip
        if obj is None:
            return [
                (None, {"fields": ("tenant", "region", "type"),
                        "description": "The topic is iot.&lt;tenant&gt;.&lt;region&gt;.&lt;type&gt; "
                                       "(.enriched for the enriched retention class)."}),
                ("Kafka topic", {"fields": topic}),
                ("Schema", {"fields": self.SCHEMA_INPUT,
                            "description": "Optional: the first version of the records' schema, registered under "
                                           "the stream's subject &lt;topic&gt;-value."}),
            ]  # fmt: skip
        schema: tuple[str, ...] = ("schema_current", "schema_versions")
        if self.has_change_permission(request, obj):
            schema += self.SCHEMA_INPUT
        return [
            (None, {"fields": ("kafka_topic", "tenant", "region", "type")}),
            ("Provisioning", {"fields": ("status_display", "last_error", "provisioned_at")}),
            ("Kafka topic", {"fields": topic}),
            ("Schema", {"fields": schema,
                        "description": f"Subject {registry.value_subject(obj.topic)} in the schema registry; ingest "
                                       "validates every record against its latest version."}),
            ("History", {"fields": ("created_at", "updated_at"), "classes": ("collapse",)}),
        ]  # fmt: skip

    @admin.display(description="current schema")
    def schema_current(self, obj: Stream) -> str:
        state = _schema_state(obj)
        if state.error:
            return format_html('<span class="errornote">{}</span>', state.error)
        if not state.versions:
            return "None yet: ingest refuses the stream's records (schema_not_found) until a version is registered."
        latest = state.versions[0]
        return format_html('<div id="schema-current"><p>Version {} (id {}, {})</p><pre style="{}">{}</pre></div>',
                           latest.version, latest.schema_id, SCHEMA_TYPE_LABELS.get(latest.schema_type),
                           PRE_STYLE, latest.schema_str)  # fmt: skip

    @admin.display(description="versions")
    def schema_versions(self, obj: Stream) -> str:
        state = _schema_state(obj)
        if state.error or not state.versions:
            return "—"
        rows = format_html_join(
            "", '<tr class="schema-version"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>'
            '<td><details><summary>text</summary><pre style="{}">{}</pre></details></td></tr>',
            ((v.version, v.schema_id, SCHEMA_TYPE_LABELS.get(v.schema_type),
              f"{v.registered_at:%Y-%m-%d %H:%M:%S} UTC" if v.registered_at else "—",
              v.registered_by or "outside Sluice", PRE_STYLE, v.schema_str) for v in state.versions),
        )  # fmt: skip
        more = state.total - len(state.versions)
        note = format_html("<p>and {} older (all of them: the REST API's …/schema/versions).</p>", more) if more else ""
        return format_html('<table id="schema-versions"><thead><tr><th>version</th><th>id</th><th>type</th>'
                           "<th>registered</th><th>by</th><th>schema</th></tr></thead><tbody>{}</tbody></table>{}",
                           rows, note)  # fmt: skip

    @admin.display(description="Kafka topic")
    def kafka_topic(self, obj: Stream) -> str:
        return obj.topic if obj.tenant_id else "—"

    @admin.display(description="status", ordering="status")
    def status_display(self, obj: Stream) -> str:
        return status_badge(obj.status)

    @admin.display(description="last error")
    def error_summary(self, obj: Stream) -> str:
        return Truncator(obj.last_error).chars(80) if obj.last_error else ""

    def service_create(self, request: HttpRequest, actor: Actor, data: dict[str, Any]) -> Stream:
        schema_type, schema = data.pop("schema_type", ""), data.pop("schema", "")
        if not schema.strip():
            return services.stream_create(actor=actor, **data)
        stream, subject, schema_id = services.stream_with_schema_create(actor=actor, schema_type=schema_type,
                                                                        schema=schema, **data)  # fmt: skip
        self.message_user(request, f"Schema {schema_id} registered as version 1 under {subject}.")
        return stream

    def service_update(self, request: HttpRequest, actor: Actor, obj: Stream, changes: dict[str, Any]) -> Stream:
        stream_changes = {name: value for name, value in changes.items() if name not in self.SCHEMA_INPUT}
        return services.stream_update(actor=actor, stream=obj, **stream_changes) if stream_changes else obj

    def save_model(self, request: HttpRequest, obj: Stream, form: forms.ModelForm, change: bool) -> None:
        super().save_model(request, obj, form, change)
        schema = form.cleaned_data.get("schema") or ""
        if not change or not schema.strip():
            return
        try:
            registered, created = services.stream_schema_register(
                actor=self.actor(request), stream=obj, schema_type=form.cleaned_data["schema_type"], schema=schema
            )
        except SluiceError as exc:
            raise ServiceRejected(exc) from exc
        if created:
            self.message_user(request, f"Schema version {registered.version} registered under {registered.subject}.")
        else:
            self.message_user(request, f"Version {registered.version} already holds this schema; nothing changed.")

    def service_delete(self, request: HttpRequest, actor: Actor, obj: Stream) -> None:
        services.stream_delete(actor=actor, stream=obj)


class DeviceGroupForm(ServiceForm):
    """Region and device type follow the stream (``DeviceGroup.follow_stream``): left empty
    they are taken from it, and a group moved to another stream takes that stream's, unless
    the same change names them (then they must match it)."""

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data  # what ModelForm.clean returns (django-stubs allows None)
        if "stream" in self.changed_data and self.instance.pk is not None:
            for name in DeviceGroup.FOLLOWS_STREAM:
                if name not in self.changed_data:
                    cleaned[name] = ""
        return cleaned


@admin.register(DeviceGroup)
class DeviceGroupAdmin(TenantScopedAdmin[DeviceGroup]):
    form = DeviceGroupForm
    immutable_fields = ("tenant", "slug")
    list_display = ("slug", "tenant", "name", "stream", "credential_policy", "kafka_direct", "rate_limit_per_second",
                    "device_count")  # fmt: skip
    list_filter = ("credential_policy", "kafka_direct", TENANT_FILTER)
    search_fields = ("slug", "name", "tenant__slug", "schema_subject")
    list_select_related = ("tenant", "stream__tenant")
    readonly_fields = ("kafka_principal", "created_at", "updated_at")

    def get_queryset(self, request: HttpRequest) -> QuerySet[DeviceGroup]:
        return super().get_queryset(request).annotate(device_total=Count("devices"))

    def get_fieldsets(self, request: HttpRequest, obj: DeviceGroup | None = None) -> FieldsetSpec:
        identity = ("tenant", "slug", "name") if obj is None else ("tenant", "slug", "name", "kafka_principal")
        fieldsets: FieldsetSpec = [
            (None, {"fields": identity}),
            ("Data", {"fields": ("region", "device_type", "stream", "schema_subject", "rate_limit_per_second",
                                 "expected_interval_seconds")}),
            ("Credentials", {"fields": ("credential_policy", "kafka_direct", "cert_key_type", "cert_lifetime_days",
                                        "cert_renewal_window_days")}),
        ]  # fmt: skip
        if obj is not None:
            fieldsets = [*fieldsets, ("History", {"fields": ("created_at", "updated_at"), "classes": ("collapse",)})]
        return fieldsets

    @admin.display(description="devices", ordering="device_total")
    def device_count(self, obj: DeviceGroup) -> int:
        return obj.device_total  # type: ignore[attr-defined]

    def service_create(self, request: HttpRequest, actor: Actor, data: dict[str, Any]) -> DeviceGroup:
        return services.group_create(actor=actor, **data)

    def service_update(self, request: HttpRequest, actor: Actor, obj: DeviceGroup,
                       changes: dict[str, Any]) -> DeviceGroup:  # fmt: skip
        return services.group_update(actor=actor, group=obj, **changes)

    def service_delete(self, request: HttpRequest, actor: Actor, obj: DeviceGroup) -> None:
        services.group_delete(actor=actor, group=obj)


class DeviceForm(ServiceForm):
    """The device's form; labels are ``key=value`` lines, as in onboarding."""

    labels = LabelsField()


@admin.register(Device)
class DeviceAdmin(TenantScopedAdmin[Device]):
    form = DeviceForm
    immutable_fields = ("tenant", "device_id")
    list_display = ("device_id", "tenant", "group", "status_display", "last_seen_at", "created_at")
    list_filter = ("status", TENANT_FILTER, ("group", admin.RelatedOnlyFieldListFilter))
    search_fields = ("device_id", "tenant__slug", "group__slug")
    list_select_related = ("tenant", "group__tenant")
    readonly_fields = ("last_seen_at", "created_at", "updated_at")
    show_full_result_count = False  # tenants have up to 100k devices; skip the second COUNT(*)

    def get_fields(self, request: HttpRequest, obj: Device | None = None) -> FieldGroups:
        fields: FieldGroups = ["tenant", "device_id", "group", "status", "labels"]
        return fields if obj is None else [*fields, "last_seen_at", "created_at", "updated_at"]

    @admin.display(description="status", ordering="status")
    def status_display(self, obj: Device) -> str:
        return status_badge(obj.status)

    def service_create(self, request: HttpRequest, actor: Actor, data: dict[str, Any]) -> Device:
        return services.device_create(actor=actor, **data)

    def service_update(self, request: HttpRequest, actor: Actor, obj: Device, changes: dict[str, Any]) -> Device:
        return services.device_update(actor=actor, device=obj, **changes)

    def service_delete(self, request: HttpRequest, actor: Actor, obj: Device) -> None:
        services.device_delete(actor=actor, device=obj)


# Credentials that may hold a grant, as ``services.consumer_principals`` counts them (and
# not expired): certificates active or in their overlap, OAuth clients not revoked.
USABLE_CERTIFICATES = Q(certificates__status__in=("active", "superseded"), certificates__not_after__gt=Now()) & ~Q(
    certificates__kafka_principal=""
)
ACTIVE_CLIENTS = Q(oauth_clients__status="active")


class ConsumerForm(ServiceForm):
    """A consumer reads every stream of its tenant (``all streams``) or the streams ticked
    here, never both; the service says so on the streams field."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        streams = self.fields.get("streams")
        if streams is not None and self.instance.pk is not None:
            # A consumer keeps its tenant: offer that tenant's streams only.
            streams.queryset = streams.queryset.filter(tenant_id=self.instance.tenant_id)  # type: ignore[attr-defined]


@admin.register(Consumer)
class ConsumerAdmin(TenantScopedAdmin[Consumer]):
    """A tenant's backend reading its streams from Kafka.  Its credentials (client
    certificates, OAuth clients) are issued on its page (``certs.admin.ConsumerPageAdmin``)."""

    form = ConsumerForm
    immutable_fields = ("tenant", "slug")
    list_display = ("slug", "name", "tenant", "status_display", "reads", "credential_count")
    list_filter = ("status", "all_streams", "dead_letters", TENANT_FILTER)
    search_fields = ("slug", "name", "tenant__slug")
    list_select_related = ("tenant",)
    readonly_fields = ("topics", "principal_prefix", "consumer_group_prefix", "created_at", "updated_at")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Consumer]:
        certificates = Count("certificates", filter=USABLE_CERTIFICATES, distinct=True)
        clients = Count("oauth_clients", filter=ACTIVE_CLIENTS, distinct=True)
        queryset = super().get_queryset(request).prefetch_related("streams__tenant")
        return queryset.annotate(credential_total=certificates + clients)

    def get_fieldsets(self, request: HttpRequest, obj: Consumer | None = None) -> FieldsetSpec:
        reads = ("all_streams", "streams", "dead_letters")
        if obj is None:
            return [(None, {"fields": ("tenant", "slug", "name", "status")}), ("What it reads", {"fields": reads})]
        return [
            (None, {"fields": ("tenant", "slug", "name", "status")}),
            ("What it reads", {"fields": (*reads, "topics")}),
            ("On Kafka", {"fields": ("principal_prefix", "consumer_group_prefix"),
                          "description": "Each credential of the consumer is its own Kafka principal; all of them "
                                         "read the topics above, in consumer groups under the group prefix."}),
            ("History", {"fields": ("created_at", "updated_at"), "classes": ("collapse",)}),
        ]  # fmt: skip

    def formfield_for_manytomany(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "streams":
            kwargs["widget"] = forms.CheckboxSelectMultiple(attrs={"class": "radiolist"})  # the admin's list style
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    def formfield_for_dbfield(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        field = super().formfield_for_dbfield(db_field, request, **kwargs)
        widget = getattr(field, "widget", None)
        if field is not None and db_field.name == "streams" and isinstance(widget, RelatedFieldWidgetWrapper):
            field.widget = widget.widget  # no "add a stream" popup: a stream is made on its own page
        return field

    @admin.display(description="status", ordering="status")
    def status_display(self, obj: Consumer) -> str:
        return status_badge(obj.status)

    @admin.display(description="reads")
    def reads(self, obj: Consumer) -> str:
        what = "All streams" if obj.all_streams else ", ".join(sorted(s.topic for s in obj.streams.all())) or "—"
        return f"{what} + dead letters" if obj.dead_letters else what

    @admin.display(description="usable credentials", ordering="credential_total")
    def credential_count(self, obj: Consumer) -> int:
        return obj.credential_total  # type: ignore[attr-defined]

    @admin.display(description="topics it reads")
    def topics(self, obj: Consumer) -> str:
        found = selectors.consumer_topics(consumer=obj)
        if not found:
            return "None: tick “All streams” or some streams."
        return format_html('<ul id="consumer-topics" style="margin: 0; padding: 0">{}</ul>',
                           format_html_join("", '<li style="list-style: none"><code>{}</code></li>',
                                            ((t,) for t in found)))  # fmt: skip

    @admin.display(description="Kafka principal prefix")
    def principal_prefix(self, obj: Consumer) -> str:
        return format_html('<code id="principal-prefix">{}</code>&lt;credential id&gt;', obj.kafka_principal_prefix)

    @admin.display(description="consumer group prefix")
    def consumer_group_prefix(self, obj: Consumer) -> str:
        return format_html('<code id="group-prefix">{}</code>', obj.group_prefix)

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> tuple[list[Any], dict[str, int], set, list]:
        """What deleting a consumer does, the way ``consumer_delete`` does it, instead of
        Django's cascade walk (which would ask for the right to delete OAuth clients, a page
        that only revokes them)."""
        deleted: list[Any] = []
        counts: dict[str, int] = {}
        for consumer in objs:
            certificates = consumer.certificates.filter(status__in=("active", "superseded")).count()
            clients = consumer.oauth_clients.count()
            counts["consumers"] = counts.get("consumers", 0) + 1
            deleted.append(f"Consumer: {consumer.slug} ({consumer.name or 'no name'})")
            deleted.append([f"{certificates} usable certificate(s) revoked (the CRL lists them)",
                            f"{clients} OAuth client(s) revoked and removed",
                            f"every Kafka grant of principals {consumer.kafka_principal_prefix}…"])  # fmt: skip
        return deleted, counts, set(), []

    def service_create(self, request: HttpRequest, actor: Actor, data: dict[str, Any]) -> Consumer:
        return services.consumer_create(actor=actor, **data)

    def service_update(self, request: HttpRequest, actor: Actor, obj: Consumer,
                       changes: dict[str, Any]) -> Consumer:  # fmt: skip
        if "streams" in changes:
            # The form shows both: streams ticked beside a ticked "all streams" is a
            # contradiction to point out, not a narrowing (the API's PATCH of streams alone).
            changes.setdefault("all_streams", obj.all_streams)
        return services.consumer_update(actor=actor, consumer=obj, **changes)

    def service_delete(self, request: HttpRequest, actor: Actor, obj: Consumer) -> None:
        services.consumer_delete(actor=actor, consumer=obj)
