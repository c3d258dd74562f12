"""fleet.widgets writes the HTML Django's widget templates write, for every value they are given."""

import datetime

import pytest
from django import forms
from django.test.html import parse_html

from fleet.filters import InstanceFilterSet
from fleet.models import Account
from fleet.tests.factories import AccountFactory
from fleet.widgets import PLAIN, plain_widgets


class Everything(forms.Form):
    q = forms.CharField(required=False, widget=forms.TextInput(attrs={"placeholder": 'id or "Name" <b>', "type": "search"}))
    hops = forms.IntegerField(required=False, min_value=1, max_value=64)
    since = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    ids = forms.CharField(required=False, widget=forms.HiddenInput)
    state = forms.ChoiceField(required=False, choices=[("", "any"), ("running", "Running & co"), ("0", "zero")])
    grouped = forms.ChoiceField(required=False, choices=[("", "any"), ("Linux", [("al2", "AL2"), ("u", "Ubuntu")]),
                                                         ("win", "Windows")])
    flag = forms.NullBooleanField(required=False, widget=forms.Select(
        choices=[("", "any"), ("true", "yes"), ("false", "no")], attrs={"disabled": True, "data-x": False}))
    account = forms.ModelChoiceField(Account.objects.all(), to_field_name="account_id", required=False,
                                     empty_label="all accounts")


def rendered(form):
    return {name: parse_html(str(form[name])) for name in form.fields}


@pytest.mark.django_db
@pytest.mark.parametrize("data", [
    None,
    {},
    {"q": '"><script>x</script>', "hops": "3", "since": "2026-11-30", "ids": "i-1 i-2", "state": "running",
     "grouped": "u", "flag": "false", "account": "222222222222"},
    {"hops": "not a number", "state": "no-such-state", "since": "yesterday"},
    {"state": "0", "grouped": "win"},
])
def test_plain_widgets_write_what_djangos_templates_write(data):
    AccountFactory(account_id="111111111111", name="a & b")
    AccountFactory(account_id="222222222222", name="<second>")
    django_form, plain_form = Everything(data), plain_widgets(Everything(data))
    if data is not None:  # bound: rendered after validation, as a page with errors is
        assert django_form.is_valid() == plain_form.is_valid()
    assert {type(field.widget) for field in plain_form.fields.values()} <= set(PLAIN.values())
    assert rendered(plain_form) == rendered(django_form)


@pytest.mark.django_db
def test_an_initial_date_is_formatted_as_the_widget_formats_it():
    initial = {"since": datetime.date(2026, 12, 2), "state": "running"}
    assert rendered(plain_widgets(Everything(initial=initial))) == rendered(Everything(initial=initial))


@pytest.mark.django_db
def test_the_instance_filter_form_renders_as_before():
    """The list page's 33 fields, bound to a query that sets several of them."""
    AccountFactory(account_id="111111111111", name="prod")
    data = {"q": "web", "account": "111111111111", "region": "eu-west-1", "http_tokens": "optional",
            "hop_limit": "2", "launched_after": "2026-01-01", "ids": "i-0123456789abcdef0"}
    plain = InstanceFilterSet(data, queryset=None).form
    django = InstanceFilterSet(data, queryset=None).form
    for field in django.fields.values():
        field.widget.__class__ = next((base for base, fast in PLAIN.items() if type(field.widget) is fast),
                                      type(field.widget))
    assert any(type(field.widget) in PLAIN.values() for field in plain.fields.values())
    assert not any(type(field.widget) in PLAIN.values() for field in django.fields.values())
    assert rendered(plain) == rendered(django)
