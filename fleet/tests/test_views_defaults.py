"""Account defaults: the matrix, read-only policy-managed regions, and the change form."""

import pytest
from django.urls import reverse

from fleet.choices import ChangeKind
from fleet.models import ChangeBatch
from fleet.tests.factories import AccountFactory, MetadataDefaultsFactory

pytestmark = pytest.mark.django_db
DEFAULTS = reverse("fleet:defaults")
CHANGE = reverse("fleet:defaults_change")


@pytest.fixture
def prod():
    account = AccountFactory(account_id="111111111111", name="prod", regions=["us-east-1", "eu-west-1", "ap-south-1"])
    MetadataDefaultsFactory(account=account, region="us-east-1", http_tokens="required", hop_limit=2,
                            managed_by="account")
    MetadataDefaultsFactory(account=account, region="eu-west-1", managed_by="declarative-policy",
                            http_tokens="required", managed_exception_message="Set by the <org> policy")
    return account


def test_matrix(viewer, prod):
    MetadataDefaultsFactory(account=AccountFactory(account_id="222222222222", name="dev", regions=["us-east-1"]),
                            status="unknown", error="UnauthorizedOperation: no ec2:GetInstanceMetadataDefaults")
    response = viewer.get(DEFAULTS)
    html = response.content.decode()
    assert response.status_code == 200
    cells = {cell.key: cell for cell in response.context["cells"]}
    assert set(cells) == {"111111111111/us-east-1", "111111111111/eu-west-1", "111111111111/ap-south-1",
                          "222222222222/us-east-1"}
    assert cells["111111111111/us-east-1"].prowler_pass
    assert cells["111111111111/ap-south-1"].defaults is None
    assert "never read" in html
    assert "unknown" in html and "no ec2:GetInstanceMetadataDefaults" in html
    assert "Set by the &lt;org&gt; policy" in html  # read-only, with its reason, escaped
    assert 'value="111111111111/eu-west-1"' not in html  # no checkbox for the policy-managed one
    assert response.context["passing"] == 2


def test_change_form_shows_current_values(operator, prod):
    response = operator.get(CHANGE, {"targets": ["111111111111/us-east-1", "111111111111/ap-south-1"]})
    assert response.status_code == 200
    html = response.content.decode()
    assert 'value="111111111111/us-east-1"' in html
    assert "no-preference" in html  # the choices, and the current "no preference" values


def test_policy_managed_target_is_refused(operator, prod):
    response = operator.get(CHANGE, {"targets": "111111111111/eu-west-1"})
    assert b"managed by a declarative policy" in response.content
    response = operator.post(CHANGE, {"targets": "111111111111/eu-west-1", "http_tokens": "required"})
    assert response.status_code == 400
    assert b"Set by the &lt;org&gt; policy" in response.content
    assert not ChangeBatch.objects.exists()


def test_post_queues_a_defaults_batch(operator, prod):
    response = operator.post(CHANGE, {
        "targets": ["111111111111/us-east-1", "111111111111/ap-south-1"],
        "http_tokens": "required", "hop_limit": "-1", "http_endpoint": "no-preference", "comment": "baseline",
    })
    batch = ChangeBatch.objects.get()
    assert response.status_code == 302 and response["Location"] == batch.get_absolute_url()
    assert batch.kind == ChangeKind.ACCOUNT_DEFAULTS
    assert batch.desired == {"http_tokens": "required", "hop_limit": -1, "http_endpoint": "no-preference"}
    assert batch.counts()["total"] == 2
    page = operator.get(batch.get_absolute_url()).content.decode()
    assert "account defaults" in page


@pytest.mark.parametrize(
    "params, message",
    [
        ({"targets": "111111111111/us-east-1"}, "Choose at least one"),
        ({"targets": "111111111111/us-east-1", "hop_limit": "0"}, "-1 for no preference"),
        ({"targets": "111111111111/us-east-1", "hop_limit": "65"}, "less than or equal to 64"),
        ({"targets": "111111111111/us-east-1", "hop_limit": "-2"}, "greater than or equal to -1"),
        ({"targets": "111111111111/us-east-1", "hop_limit": "abc"}, "whole number"),
        ({"targets": "111111111111/us-east-1", "http_tokens": "maybe"}, "valid choice"),
        ({"targets": "999999999999/us-east-1", "http_tokens": "required"}, "Unknown account/region"),
        ({"targets": "111111111111/mars-1", "http_tokens": "required"}, "invalid value"),
        ({"targets": "<script>", "http_tokens": "required"}, "invalid value"),
        ({"http_tokens": "required"}, "required"),
    ],
)
def test_bad_input_is_a_form_error(operator, prod, params, message):
    response = operator.post(CHANGE, params)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert "<script>" not in response.content.decode().split("<body")[1]
    assert not ChangeBatch.objects.exists()


def test_viewer_cannot_change_defaults(viewer, prod):
    assert viewer.get(CHANGE, {"targets": "111111111111/us-east-1"}).status_code == 403
    assert viewer.post(CHANGE, {"targets": "111111111111/us-east-1", "http_tokens": "required"}).status_code == 403
    assert not ChangeBatch.objects.exists()
    assert b"Edit</a>" not in viewer.get(DEFAULTS).content
