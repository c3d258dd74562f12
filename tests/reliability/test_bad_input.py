"""Bad input never gets a 5xx: hypothesis throws junk at every form field, filter parameter and
URL path, and explicit cases pin the error a user sees (a 4xx, a form error in words).

Hypothesis keeps no example database here (``database=None``) and prints the failing example's
reproduction blob, so a failure in CI can be replayed with ``@reproduce_failure``.
"""

from urllib.parse import quote

import pytest
from django.urls import reverse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.models import ChangeBatch

from .conftest import ACCOUNT_ID, INSTANCE_ID, client_for

pytestmark = pytest.mark.django_db

FUZZ = settings(max_examples=40, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

KNOWN = [
    "", "required", "optional", "enabled", "disabled", "no-preference", "bogus", "-1", "0", "1", "2", "64", "65",
    "1.5", "1e3", "abc", "99999999999999999999", "present", "gone", "all", "yes", "no", "unknown", "pending",
    "applied", "running", "stopped", "terminated", "true", "false", "on", ACCOUNT_ID, "999999999999", INSTANCE_ID,
    "i-00000000000000bad", "i-xyz", f"{ACCOUNT_ID}/us-east-1", f"{ACCOUNT_ID}/mars-1", "us-east-1", "%00", "\x00",
    "../../etc/passwd", "<script>alert(1)</script>", "' OR 1=1 --", "a=b&c=d", "gone=gone&hop_limit=x", "☃",
    "\u202e", "instance_options", "account_defaults",
]
junk = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)
scalar = st.one_of(st.sampled_from(KNOWN), junk, st.integers(-(10**20), 10**20).map(str),
                   st.text(max_size=3).map(lambda s: s * 3000))  # oversized
value = st.one_of(scalar, st.lists(scalar, min_size=1, max_size=4))


def params(*keys):
    extra = ["page", "sort", "per_page", "junk", "csrfmiddlewaretoken", ""]
    return st.dictionaries(st.sampled_from([*keys, *extra]), value, max_size=len(keys) + 2)


INSTANCE_FILTER = ("q", "account", "region", "http_tokens", "http_endpoint", "hop_limit", "metadata_state",
                   "instance_state", "instance_metadata_tags", "v1_usage", "gone")
OPTIONS = ("http_tokens", "hop_limit", "http_endpoint", "http_protocol_ipv6", "instance_metadata_tags")
CONFIRM = ("ids", "filter", "comment", "dry_run", "override_usage", *OPTIONS)
DEFAULTS = ("targets", "http_tokens", "hop_limit", "http_endpoint", "instance_metadata_tags", "comment", "dry_run")


def body(response):
    return b"".join(response.streaming_content) if response.streaming else response.content


def assert_no_5xx(response, what):
    # Django's test client re-raises a view's exception: a 500 fails the test before this line.
    assert response.status_code < 500, what
    body(response)  # a streamed body (CSV) fails while streaming, so drain it


@pytest.fixture
def viewer(world):
    return client_for("viewer")


@pytest.fixture
def operator(world):
    return client_for("operator")


# ---------------------------------------------------------------- fuzzing


@FUZZ
@given(query=params(*INSTANCE_FILTER), htmx=st.booleans())
def test_fuzz_instance_list(viewer, query, htmx):
    headers = {"HTTP_HX_REQUEST": "true"} if htmx else {}
    assert_no_5xx(viewer.get(reverse("fleet:instance_list"), query, **headers), query)


@FUZZ
@given(query=params(*INSTANCE_FILTER))
def test_fuzz_csv_export(viewer, query):
    response = viewer.get(reverse("fleet:instance_export"), query)
    assert response.status_code in (200, 400), query
    assert_no_5xx(response, query)


@FUZZ
@given(query=params(*CONFIRM), filter_query=params(*INSTANCE_FILTER))
def test_fuzz_confirmation_page_get(operator, query, filter_query):
    if "filter" not in query and filter_query:
        from django.utils.http import urlencode

        query["filter"] = urlencode(filter_query, doseq=True)
    assert_no_5xx(operator.get(reverse("fleet:change_new"), query), query)


@FUZZ
@given(data=params(*CONFIRM))
def test_fuzz_confirmation_page_post(operator, data):
    assert_no_5xx(operator.post(reverse("fleet:change_new"), data), data)


@FUZZ
@given(data=params(*OPTIONS))
def test_fuzz_instance_detail_post(operator, data):
    assert_no_5xx(operator.post(reverse("fleet:instance_detail", args=[INSTANCE_ID]), data), data)


@FUZZ
@given(data=params(*DEFAULTS), method=st.sampled_from(["get", "post"]))
def test_fuzz_defaults_change(operator, data, method):
    assert_no_5xx(getattr(operator, method)(reverse("fleet:defaults_change"), data), data)


@FUZZ
@given(action=st.sampled_from(["cancel", "retry", "rollback", "rerun"]), data=params("comment"),
       pk=st.one_of(st.just(None), st.integers(0, 10**20)))
def test_fuzz_batch_actions(operator, world, action, data, pk):
    pk = world["batch"].pk if pk is None else pk
    assert_no_5xx(operator.post(f"/changes/{pk}/{action}/", data), (action, pk, data))


@FUZZ
@given(query=params("state", "q", "kind", "dry_run"))
def test_fuzz_change_list_and_detail_filters(viewer, world, query):
    assert_no_5xx(viewer.get(reverse("fleet:change_list"), query), query)
    assert_no_5xx(viewer.get(reverse("fleet:change_detail", args=[world["batch"].pk]), query), query)
    assert_no_5xx(viewer.get(reverse("fleet:change_progress", args=[world["batch"].pk]), query), query)


segment = st.one_of(st.sampled_from(["", "new", "export.csv", INSTANCE_ID, "1", "0", "-1", "99999999999999999999",
                                     "progress", "cancel", "retry", "rollback", "rerun", "change", "..", "%00",
                                     "i-0123456789ABCDEF0"]),
                    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))


@FUZZ
@given(root=st.sampled_from(["/instances/", "/changes/", "/defaults/", "/"]),
       parts=st.lists(segment, max_size=4), slash=st.booleans(), method=st.sampled_from(["get", "post"]))
def test_fuzz_paths(operator, root, parts, slash, method):
    path = root + "/".join(quote(part, safe="") for part in parts) + ("/" if slash and parts else "")
    response = getattr(operator, method)(path)
    assert_no_5xx(response, path)
    assert response.status_code in (200, 301, 302, 400, 403, 404, 405), (path, response.status_code)


# ---------------------------------------------------------------- explicit cases

NEW = reverse("fleet:change_new")
DETAIL = reverse("fleet:instance_detail", args=[INSTANCE_ID])
DEFAULTS_URL = reverse("fleet:defaults_change")
LIST = reverse("fleet:instance_list")
EXPORT = reverse("fleet:instance_export")
TARGET = f"{ACCOUNT_ID}/us-east-1"
FULL = {"http_tokens": "required", "hop_limit": "1", "http_endpoint": "enabled", "http_protocol_ipv6": "disabled",
        "instance_metadata_tags": "disabled"}
IDS_501 = [f"i-{n:017x}" for n in range(1, 502)]

CASES = [
    # hop limits
    ("get", NEW, {"ids": INSTANCE_ID, "hop_limit": "0"}, 400, "greater than or equal to 1"),
    ("get", NEW, {"ids": INSTANCE_ID, "hop_limit": "65"}, 400, "less than or equal to 64"),
    ("get", NEW, {"ids": INSTANCE_ID, "hop_limit": "abc"}, 400, "Enter a whole number"),
    ("post", NEW, {"ids": INSTANCE_ID, "hop_limit": "0"}, 400, "greater than or equal to 1"),
    ("post", NEW, {"ids": INSTANCE_ID, "hop_limit": "65"}, 400, "less than or equal to 64"),
    ("post", NEW, {"ids": INSTANCE_ID, "hop_limit": "abc"}, 400, "Enter a whole number"),
    ("post", DETAIL, {**FULL, "hop_limit": "0"}, 400, "greater than or equal to 1"),
    ("post", DETAIL, {**FULL, "hop_limit": "65"}, 400, "less than or equal to 64"),
    ("post", DETAIL, {**FULL, "hop_limit": "abc"}, 400, "Enter a whole number"),
    ("post", DEFAULTS_URL, {"targets": TARGET, "hop_limit": "0"}, 400, "-1 for no preference"),
    ("post", DEFAULTS_URL, {"targets": TARGET, "hop_limit": "65"}, 400, "less than or equal to 64"),
    ("post", DEFAULTS_URL, {"targets": TARGET, "hop_limit": "abc"}, 400, "Enter a whole number"),
    ("get", LIST, {"hop_limit": "0"}, 200, "The filter is not valid"),
    ("get", EXPORT, {"hop_limit": "65"}, 400, "hop_limit"),
    ("get", EXPORT, {"hop_limit": "abc"}, 400, "hop_limit"),
    # unknown enums
    ("get", NEW, {"ids": INSTANCE_ID, "http_tokens": "maybe"}, 400, "valid choice"),
    ("post", NEW, {"ids": INSTANCE_ID, "http_endpoint": "sometimes"}, 400, "valid choice"),
    ("post", DETAIL, {**FULL, "instance_metadata_tags": "perhaps"}, 400, "valid choice"),
    ("post", DEFAULTS_URL, {"targets": TARGET, "http_tokens": "optional-ish"}, 400, "valid choice"),
    ("post", DEFAULTS_URL, {"targets": TARGET, "http_endpoint": "no_preference"}, 400, "valid choice"),
    ("get", LIST, {"http_tokens": "maybe"}, 200, "The filter is not valid"),
    ("get", EXPORT, {"metadata_state": "done"}, 400, "metadata_state"),
    ("get", reverse("fleet:change_list"), {"kind": "everything"}, 200, "valid choice"),
    # malformed or unknown instance ids
    ("get", NEW, {"ids": "i-xyz", "http_tokens": "required"}, 400, "1 invalid value(s): i-xyz"),
    ("post", NEW, {"ids": ["i-0123", INSTANCE_ID], "http_tokens": "required"}, 400, "invalid value"),
    ("post", NEW, {"ids": "i-00000000000000bad", "http_tokens": "required"}, 400, "unknown or gone"),
    ("post", NEW, {"ids": "i-0123456789abcdef2", "http_tokens": "required"}, 400, "unknown or gone"),  # gone
    ("get", reverse("fleet:instance_detail", args=["i-xyz"]), None, 404, "Not found"),
    ("get", reverse("fleet:instance_detail", args=["i-00000000000000bad"]), None, 404, "Not found"),
    ("post", reverse("fleet:instance_detail", args=["i-00000000000000bad"]), FULL, 404, "Not found"),
    ("post", DEFAULTS_URL, {"targets": "999999999999/us-east-1", "http_tokens": "required"}, 400, "Unknown account"),
    ("post", DEFAULTS_URL, {"targets": "12345/us-east-1", "http_tokens": "required"}, 400, "invalid value"),
    # oversized input
    ("post", NEW, {"ids": INSTANCE_ID, "http_tokens": "required", "comment": "x" * 2001}, 400, "at most 2000"),
    ("get", NEW, {"ids": IDS_501, "http_tokens": "required"}, 400, "At most 500 values"),
    ("get", NEW, {"filter": "q=" + "x" * 4000, "http_tokens": "required"}, 400, "at most 4000"),
    ("get", NEW, {"filter": "q=" + "x" * 300, "http_tokens": "required"}, 400, "The filter is not valid"),
    ("get", LIST, {"q": "x" * 201}, 200, "at most 200 characters"),
    ("post", DEFAULTS_URL, {"targets": [TARGET] * 2001, "http_tokens": "required"}, 400, "too many values"),  # > 1000 fields
    ("get", NEW, {"ids": [INSTANCE_ID] * 1001, "http_tokens": "required"}, 400, "too many values"),
    ("post", DEFAULTS_URL, {"targets": TARGET, "http_tokens": "required", "comment": "y" * 3_000_000}, 400, "Bad request"),
    ("get", "/instances/" + "i-" + "a" * 5000 + "/", None, 404, "Not found"),
    ("get", "/changes/99999999999999999999999/", None, 404, "Not found"),
    ("post", "/changes/99999999999999999999999/cancel/", {}, 404, "Not found"),
    ("get", "/changes/99999999999999999999999/progress/", None, 404, "Not found"),
]


@pytest.mark.parametrize("method, url, data, status, text", CASES,
                         ids=[f"{c[0]}-{c[1][:30]}-{str(c[2])[:40]}" for c in CASES])
def test_bad_input_gets_a_clear_error(operator, method, url, data, status, text):
    before = ChangeBatch.objects.count()
    response = getattr(operator, method)(url, data)
    assert response.status_code == status
    assert text in body(response).decode()
    assert ChangeBatch.objects.count() == before


def test_rollback_comment_too_long_is_a_message(operator, world):
    batch = world["batch"]
    response = operator.post(reverse("fleet:change_rollback", args=[batch.pk]), {"comment": "z" * 2001})
    assert response.status_code == 400
    assert "at most 2000 characters" in response.content.decode()
    assert batch.rollbacks.count() == 0
