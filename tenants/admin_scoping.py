"""The one tenant-scoping mixin every Sluice admin page builds on.

The admin is a second door into the same data as the REST API, so it follows the same rules,
from the same place (``tenants.scoping``: the user's ``Scope``, applied with ``restrict`` as
every selector applies it):

* lists and detail pages show only the tenants in the user's scope -- another tenant's
  object is "not found" (the admin's redirect with "doesn't exist"), never shown;
* platform operators (superusers) see and change everything; tenant admins change their
  own tenants' objects; tenant viewers only look;
* foreign-key choices (tenant, stream, device group) offer only tenants the user administers;
* every write goes through the service layer with ``Actor.of(request.user)``, so it is
  validated, audited and provisioned exactly like an API call.  A ``SluiceError`` from a
  service is shown on the form (or as a message), never as a server error.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import models
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from config.errors import SluiceError
from tenants.audit import Actor
from tenants.models import Membership, Tenant
from tenants.scoping import Scope, restrict, scope_for
from tenants.selectors import tenant_list

STATUS_COLOURS = {"active": "#2e7d32", "provisioned": "#2e7d32", "pending": "#b26a00", "suspended": "#b26a00",
                  "failed": "#c62828", "disabled": "#616161"}  # fmt: skip


def status_badge(value: str, label: str | None = None) -> str:
    """A small coloured label for a status value (shared with devices.admin)."""
    colour = STATUS_COLOURS.get(value, "#616161")
    return format_html(
        '<span style="color:#fff;background:{};padding:1px 8px;border-radius:8px;font-size:11px">{}</span>',
        colour,
        label or value,
    )


GENERIC_MESSAGES = {"Some fields are invalid."}

# The model a TenantScopedAdmin pages over: its service hooks take and return that model.
ModelT = TypeVar("ModelT", bound=models.Model)


class ServiceRejected(Exception):
    """Raised out of ``save_model``/``delete_model`` so the admin's transaction rolls back;
    caught by the views below, which show ``error`` to the user."""

    def __init__(self, error: SluiceError) -> None:
        super().__init__(error.message)
        self.error = error


def _field_name(pointer: str) -> str:
    """``/slug`` -> ``slug``; ``/rows/3/labels`` -> ``rows`` (the form field it starts at)."""
    head = pointer.lstrip("/").split("/", 1)[0]
    return head.replace("~1", "/").replace("~0", "~")


class ServiceForm(forms.ModelForm):
    """A model form that can carry the error a service raised for the same input, so the
    admin re-renders the form with that error on the right field."""

    sluice_error: SluiceError | None = None

    def _post_clean(self) -> None:
        super()._post_clean()  # type: ignore[misc]  # Django's hook after field cleaning; not in django-stubs
        if self.sluice_error is not None:
            show_service_error(self, self.sluice_error)


def show_service_error(form: forms.BaseForm, error: SluiceError) -> None:
    """Put a service's error on ``form``: each field pointer on the form field it starts at,
    anything else (and the error's own message, unless a field already says it) above the form."""
    field_messages: list[str] = []
    for item in error.fields:
        name = _field_name(item.get("pointer", ""))
        message = item.get("message") or error.message
        if name in form.fields:
            form.add_error(name, message)
            field_messages.append(message)
        else:
            label = f"{name}: " if name else ""
            form.add_error(None, f"{label}{message}")
    if not error.fields or (error.message not in field_messages and error.message not in GENERIC_MESSAGES):
        form.add_error(None, error.message)


class TenantScopedAdmin(admin.ModelAdmin, Generic[ModelT]):
    """Base of every Sluice ``ModelAdmin``.

    Subclasses set ``tenant_lookup`` (the ORM path from the model to its ``Tenant``;
    ``"pk"`` for ``Tenant`` itself) and implement ``service_create``/``service_update``/
    ``service_delete``.  ``read_only`` pages (audit log, tokens) never write.
    """

    form = ServiceForm
    tenant_lookup = "tenant"
    read_only = False
    operator_only_add = False
    operator_only_delete = False
    # Fields shown read-only once the object exists (the services refuse to change them).
    immutable_fields: tuple[str, ...] = ()

    # -- scope ------------------------------------------------------------------------

    def scope(self, request: HttpRequest) -> Scope:
        cached = getattr(request, "_sluice_scope", None)
        if cached is None or cached.user is not request.user:
            cached = scope_for(request.user)
            request._sluice_scope = cached  # type: ignore[attr-defined]
        return cached

    def actor(self, request: HttpRequest) -> Actor:
        return Actor.of(request.user)

    def writable_tenants(self, request: HttpRequest) -> QuerySet[Tenant]:
        """The tenants this user may change: all for operators, else those they administer."""
        return tenant_list(scope=self.scope(request).writable())

    def tenant_of(self, obj: models.Model) -> Tenant | None:
        if isinstance(obj, Tenant):
            return obj
        return getattr(obj, "tenant", None)

    def scope_queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return restrict(queryset, scope=self.scope(request), lookup=self.tenant_lookup)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return self.scope_queryset(request, super().get_queryset(request))

    # -- permissions: from tenant roles, not Django's per-model permissions -----------

    def _is_admin_anywhere(self, request: HttpRequest) -> bool:
        scope = self.scope(request)
        return scope.is_operator or Membership.Role.ADMIN in scope.roles.values()

    def has_module_permission(self, request: HttpRequest) -> bool:
        scope = self.scope(request)
        return scope.is_operator or bool(scope.roles)

    def has_view_permission(self, request: HttpRequest, obj: models.Model | None = None) -> bool:
        scope = self.scope(request)
        if scope.is_operator:
            return True
        if obj is None:
            return bool(scope.roles)
        tenant = self.tenant_of(obj)
        return tenant is not None and tenant.pk in scope.roles

    def has_add_permission(self, request: HttpRequest) -> bool:
        if self.read_only:
            return False
        if self.operator_only_add:
            return self.scope(request).is_operator
        return self._is_admin_anywhere(request)

    def has_change_permission(self, request: HttpRequest, obj: models.Model | None = None) -> bool:
        if self.read_only:
            return False
        if obj is None:
            return self._is_admin_anywhere(request)
        tenant = self.tenant_of(obj)
        return tenant is not None and self.scope(request).can_admin(tenant)

    def has_delete_permission(self, request: HttpRequest, obj: ModelT | None = None) -> bool:
        if self.read_only:
            return False
        if self.operator_only_delete:
            return self.scope(request).is_operator
        return self.has_change_permission(request, obj)

    def has_operator_permission(self, request: HttpRequest) -> bool:
        """For ``@admin.action(permissions=["operator"])``."""
        return self.scope(request).is_operator

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        # Bulk delete would bypass the services' per-object checks and audit; delete one by one.
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    # -- forms -------------------------------------------------------------------------

    def get_readonly_fields(self, request: HttpRequest, obj: ModelT | None = None) -> tuple[str, ...]:
        fields = tuple(super().get_readonly_fields(request, obj))
        if obj is not None:
            fields += tuple(f for f in self.immutable_fields if f not in fields)
        return fields

    def _writable_choices(self, db_field: models.Field, request: HttpRequest, kwargs: dict[str, Any]) -> None:
        """A relation's choices: only the tenants, or the rows of tenants, the user administers."""
        related = db_field.related_model
        assert not isinstance(related, str)  # "self" is resolved to the model once the apps are loaded
        if related is Tenant:
            kwargs["queryset"] = self.writable_tenants(request)
        elif related is not None and any(f.name == "tenant" and f.related_model is Tenant
                                         for f in related._meta.fields):  # fmt: skip
            writable = self.scope(request).writable()
            kwargs["queryset"] = restrict(related._default_manager.select_related("tenant"), scope=writable)

    def formfield_for_foreignkey(self, db_field: models.ForeignKey, request: HttpRequest, **kwargs: Any) -> Any:
        self._writable_choices(db_field, request, kwargs)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def formfield_for_manytomany(self, db_field: models.ManyToManyField, request: HttpRequest,
                                 **kwargs: Any) -> Any:  # fmt: skip
        self._writable_choices(db_field, request, kwargs)
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    def get_form(self, request: HttpRequest, obj: models.Model | None = None, change: bool = False,
                 **kwargs: Any) -> type[forms.ModelForm]:  # fmt: skip
        form_class = super().get_form(request, obj, change, **kwargs)
        error = getattr(request, "_sluice_error", None)
        if error is not None:
            form_class = type(form_class.__name__, (form_class,), {"sluice_error": error})
        return form_class

    # -- writes through the services ---------------------------------------------------

    def service_create(self, request: HttpRequest, actor: Actor, data: dict[str, Any]) -> ModelT:
        raise NotImplementedError

    def service_update(self, request: HttpRequest, actor: Actor, obj: ModelT,
                       changes: dict[str, Any]) -> ModelT:  # fmt: skip
        raise NotImplementedError

    def service_delete(self, request: HttpRequest, actor: Actor, obj: ModelT) -> None:
        raise NotImplementedError

    def save_model(self, request: HttpRequest, obj: ModelT, form: forms.ModelForm, change: bool) -> None:
        actor = self.actor(request)
        try:
            if change:
                # A fresh copy: the form already applied the input to ``obj``, and the service
                # must see (and audit) the object as it was.
                current = type(obj)._default_manager.get(pk=obj.pk)
                changes = {name: form.cleaned_data[name] for name in form.changed_data if name in form.cleaned_data}
                saved = self.service_update(request, actor, current, changes) if changes else current
            else:
                data = {name: form.cleaned_data[name] for name in form.fields if name in form.cleaned_data}
                tenant = data.get("tenant")
                if isinstance(tenant, Tenant):
                    self.scope(request).require_admin(tenant)
                saved = self.service_create(request, actor, data)
        except SluiceError as exc:
            raise ServiceRejected(exc) from exc
        obj.pk = saved.pk
        obj.refresh_from_db()
        obj._state.adding = False

    def save_related(self, request: HttpRequest, form: forms.ModelForm, formsets: Any, change: bool) -> None:
        # Many-to-many fields are the service's to write (``save_model``), with the rest of
        # the object: the form's own ``save_m2m`` would set them again behind its back.
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)

    def delete_model(self, request: HttpRequest, obj: ModelT) -> None:
        try:
            self.service_delete(request, self.actor(request), obj)
        except SluiceError as exc:
            raise ServiceRejected(exc) from exc

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[ModelT]) -> None:
        for obj in queryset:
            self.delete_model(request, obj)

    # -- pages of an object's own (issue a credential, ...) ---------------------------------

    def scoped_object(self, request: HttpRequest, object_id: str) -> ModelT | None:
        """The object if this user may see it (the scoped queryset), else None."""
        try:
            return self.get_queryset(request).get(pk=int(object_id))
        except (ValueError, self.model.DoesNotExist):
            return None

    def writable_object(self, request: HttpRequest, object_id: str) -> ModelT:
        """The object for a page that changes it: 404 outside the user's scope (as for no
        object at all), 403 for a tenant viewer."""
        obj = self.scoped_object(request, object_id)
        if obj is None:
            raise Http404(f"No such {self.opts.verbose_name}.")
        if not self.has_change_permission(request, obj):
            raise PermissionDenied
        return obj

    def change_url(self, obj: models.Model) -> str:
        opts = self.opts
        return reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk],
                       current_app=self.admin_site.name)  # fmt: skip

    def object_page(self, request: HttpRequest, template: str, obj: models.Model, title: str,
                    **context: Any) -> TemplateResponse:  # fmt: skip
        """A console page about ``obj`` (its breadcrumbs lead back to its change page)."""
        return TemplateResponse(request, template, {
            **self.admin_site.each_context(request), "opts": self.opts, "original": obj, "title": title,
            "change_url": self.change_url(obj), **context,
        })  # fmt: skip

    def changeform_view(self, request: HttpRequest, object_id: str | None = None, form_url: str = "",
                        extra_context: dict[str, Any] | None = None) -> HttpResponse:  # fmt: skip
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except ServiceRejected as rejected:
            # The transaction rolled back.  Show the same input again, with the service's
            # error on its field: the second pass's form is invalid, so nothing is saved.
            request._sluice_error = rejected.error  # type: ignore[attr-defined]
            return super().changeform_view(request, object_id, form_url, extra_context)

    def delete_view(self, request: HttpRequest, object_id: str,
                    extra_context: dict[str, Any] | None = None) -> HttpResponse:  # fmt: skip
        try:
            return super().delete_view(request, object_id, extra_context)
        except ServiceRejected as rejected:
            self.message_user(request, rejected.error.message, messages.ERROR)
            opts = self.opts
            url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[object_id],
                          current_app=self.admin_site.name)  # fmt: skip
            return HttpResponseRedirect(url)


__all__ = ["ServiceForm", "ServiceRejected", "TenantScopedAdmin", "show_service_error"]
