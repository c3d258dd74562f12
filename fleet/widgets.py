"""Form widgets whose HTML is written in Python, for the forms on every list page and the overview.

Django renders each widget through a template, and a ``<select>`` through one more template per
option (an ``{% include %}`` each); profiled on 2026-12-02 that was a quarter of the instance
list's time (33 filter fields) and, with an organization's 200 accounts in a select, a third of the
overview's. These subclasses write the same HTML as Django's templates (``input.html``,
``select.html``, ``select_option.html`` and ``attrs.html``: the same attributes, values formatted
by the widget's own ``format_value``, everything escaped: :func:`escape_text`); nothing else of the
widget changes (its value parsing, its choices, ``build_attrs``). :func:`plain_widgets` gives a
form's fields these widgets; a widget of any other class keeps Django's rendering. No maintained
library offers this (the alternatives are other template engines for the whole form renderer).
"""

from html import escape

from django import forms
from django.forms.utils import flatatt
from django.utils.html import format_html
from django.utils.safestring import mark_safe


class PlainInputMixin:
    """``<input>`` as Django's ``input.html`` writes it."""

    def render(self, name, value, attrs=None, renderer=None):
        value = self.format_value(value)
        return format_html('<input type="{}" name="{}"{}{}>', self.input_type, name,
                           format_html(' value="{}"', value) if value is not None else "",
                           flatatt(self.build_attrs(self.attrs, attrs)))


def escape_text(value):
    """Django's ``conditional_escape`` without its check of every argument for lazy text."""
    return value.__html__() if hasattr(value, "__html__") else escape(str(value))


class PlainSelect(forms.Select):
    """``<select>`` as Django's ``select.html`` writes it, its options in one pass over the choices
    (the first option whose value is the widget's value is selected, as Django's ``optgroups``)."""

    def render(self, name, value, attrs=None, renderer=None):
        values = set(self.format_value(value))
        final = self.build_attrs(self.attrs, attrs)
        if self.allow_multiple_selected:
            final["multiple"] = True
        chosen = False

        def options(choices):
            nonlocal chosen
            for option_value, label in choices:
                option_value = "" if option_value is None else str(option_value)
                selected = option_value in values and (self.allow_multiple_selected or not chosen)
                chosen = chosen or selected
                yield f'<option value="{escape_text(option_value)}"{" selected" if selected else ""}>{escape_text(label)}</option>'

        parts = []
        for group_value, group_label in self.choices:
            if isinstance(group_label, (list, tuple)):  # an optgroup: (its label, its choices)
                parts.append(f'<optgroup label="{escape_text(group_value)}">{"".join(options(group_label))}</optgroup>')
            else:
                parts.extend(options([(group_value, group_label)]))
        return mark_safe(f'<select name="{escape_text(name)}"{flatatt(final)}>{"".join(parts)}</select>')  # noqa: S308 - escaped


class PlainTextInput(PlainInputMixin, forms.TextInput):
    pass


class PlainNumberInput(PlainInputMixin, forms.NumberInput):
    pass


class PlainDateInput(PlainInputMixin, forms.DateInput):
    pass


class PlainHiddenInput(PlainInputMixin, forms.HiddenInput):
    pass


PLAIN = {forms.Select: PlainSelect, forms.TextInput: PlainTextInput, forms.NumberInput: PlainNumberInput,
         forms.DateInput: PlainDateInput, forms.HiddenInput: PlainHiddenInput}


def plain_widgets(form):
    """Give ``form``'s fields the plain widget of their widget's exact class (the form's own copies:
    Django deep-copies its fields for every form instance). Returns the form."""
    for field in form.fields.values():
        plain = PLAIN.get(type(field.widget))
        if plain is not None:
            field.widget.__class__ = plain  # a subclass that only renders differently
    return form
