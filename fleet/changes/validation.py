"""What a change may set: validation of instance options and account defaults."""

from django.core.exceptions import ValidationError

from ..choices import DefaultsHttpTokens, DefaultsToggle, HttpTokens, Toggle
from ..models.inventory import DEFAULTS_FIELDS, INSTANCE_OPTION_FIELDS

REQUIRE_IMDSV2 = {"http_tokens": HttpTokens.REQUIRED.value}


class ChangeRefused(Exception):
    """A change the service will not queue; the message is meant for the user. ``batch``, when
    set, is the batch the user should look at (the one holding the instances, or the one a
    replayed form already created)."""

    def __init__(self, message, batch=None):
        super().__init__(message)
        self.batch = batch


class AlreadySubmitted(ChangeRefused):
    """The same confirmation form was submitted before: ``batch`` is what it created."""


def _clean(data, fields, choices_for, hop_range):
    unknown = set(data) - set(fields)
    if unknown:
        raise ValidationError(f"Unknown option(s): {', '.join(sorted(unknown))}.")
    cleaned = {}
    for name in fields:
        value = data.get(name)
        if value is None or value == "":
            continue
        if name == "hop_limit":
            try:
                hops = int(value)
            except (TypeError, ValueError):
                raise ValidationError(f"Hop limit must be a whole number, not {str(value)[:20]!r}.") from None
            if hops not in hop_range:
                raise ValidationError(
                    f"Hop limit must be between {hop_range[0] if hop_range[0] > 0 else 1} and 64"
                    + (" (or -1 for no preference)." if -1 in hop_range else ".")
                )
            cleaned[name] = hops
        else:
            allowed = choices_for[name]
            if value not in allowed:
                raise ValidationError(f"{name} must be one of {', '.join(allowed)}, not {str(value)[:40]!r}.")
            cleaned[name] = value
    if not cleaned:
        raise ValidationError("Choose at least one option to change.")
    return cleaned


def clean_instance_desired(data):
    """Validate the options of an instance change; returns only the parameters being set."""
    choices_for = {
        "http_tokens": HttpTokens.values,
        "http_endpoint": Toggle.values,
        "http_protocol_ipv6": Toggle.values,
        "instance_metadata_tags": Toggle.values,
    }
    return _clean(data, INSTANCE_OPTION_FIELDS, choices_for, range(1, 65))


def clean_defaults_desired(data):
    """Validate account-level defaults; ``no-preference`` and hop ``-1`` clear a setting."""
    choices_for = {
        "http_tokens": DefaultsHttpTokens.values,
        "http_endpoint": DefaultsToggle.values,
        "instance_metadata_tags": DefaultsToggle.values,
    }
    return _clean(data, DEFAULTS_FIELDS, choices_for, [-1, *range(1, 65)])
