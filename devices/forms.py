"""Form fields shared by the console and onboarding, so both read a device's labels the
same way: one ``key=value`` per line (the REST API takes the same labels as a JSON object)."""

from __future__ import annotations

from typing import Any

from django import forms

LABELS_HELP = "Optional: one key=value per line, e.g. site=berlin-1."
LABELS_PLACEHOLDER = "site=berlin-1\nfloor=3"


def labels_as_text(labels: dict[str, str]) -> str:
    """``{"site": "berlin-1", "floor": "3"}`` -> ``site=berlin-1\\nfloor=3`` (sorted by key)."""
    return "\n".join(f"{key}={value}" for key, value in sorted(labels.items()))


def labels_from_text(text: str) -> dict[str, str]:
    """Parse ``key=value`` lines; blank lines are skipped, a value may contain ``=``."""
    labels: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, separator, value = line.partition("=")
        key = key.strip()
        if not separator or not key:
            raise forms.ValidationError(f"Line {number}: expected key=value, got '{line.strip()}'.", code="invalid")
        if key in labels:
            raise forms.ValidationError(f"Line {number}: the key '{key}' appears twice.", code="duplicate")
        labels[key] = value.strip()
    return labels


class LabelsField(forms.CharField):
    """A device's labels as ``key=value`` lines, cleaned to a ``dict[str, str]``."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        kwargs.setdefault("help_text", LABELS_HELP)
        kwargs.setdefault(
            "widget", forms.Textarea(attrs={"rows": 4, "spellcheck": "false", "placeholder": LABELS_PLACEHOLDER})
        )
        kwargs.pop("encoder", None)  # passed by a model JSONField's formfield(); text needs none
        kwargs.pop("decoder", None)
        super().__init__(**kwargs)

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, dict):
            return labels_as_text(value)
        return value

    def to_python(self, value: Any) -> dict[str, str]:  # type: ignore[override]
        if isinstance(value, dict):
            return value
        return labels_from_text(super().to_python(value) or "")

    def has_changed(self, initial: Any, data: Any) -> bool:
        try:
            return self.to_python(initial or {}) != self.to_python(data)
        except forms.ValidationError:
            return True
