"""Model validation and the database-level guarantees the rest of imdsweb relies on."""

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from fleet.choices import ItemState
from fleet.models import Account, ChangeItem, Instance
from fleet.tests.factories import AccountFactory, ChangeBatchFactory, ChangeItemFactory, InstanceFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "field, value",
    [
        ("account_id", "12345678901"),
        ("account_id", "1234567890123"),
        ("account_id", "12345678901a"),
        ("role_arn", "arn:aws:iam::123:role/x"),
        ("role_arn", "arn:aws:s3:::bucket"),
        ("role_arn", "not an arn"),
        ("regions", []),
        ("regions", ["us-east-1", "us-east-1"]),
        ("regions", ["US-EAST-1"]),
        ("regions", ["mars-north-1x"]),
        ("external_id", "x"),
    ],
)
def test_account_validation_rejects(field, value):
    account = Account(account_id="123456789012", name="prod", regions=["us-east-1"])
    setattr(account, field, value)
    with pytest.raises(ValidationError) as exc:
        account.full_clean()
    assert field in exc.value.message_dict


def test_account_validation_accepts_real_values():
    Account(
        account_id="123456789012",
        name="prod",
        regions=["us-east-1", "eu-west-1", "us-gov-west-1"],
        role_arn="arn:aws:iam::123456789012:role/path/imdsweb-reader",
        external_id="imdsweb-demo",
    ).full_clean()


@pytest.mark.parametrize("instance_id", ["i-123", "i-0123456789abcdef", "x-0123456789abcdef0", "i-0123456789ABCDEF0"])
def test_instance_id_validation(instance_id):
    instance = InstanceFactory.build(account=AccountFactory(), instance_id=instance_id)
    with pytest.raises(ValidationError) as exc:
        instance.full_clean()
    assert "instance_id" in exc.value.message_dict


def test_instance_unique_per_account_and_region():
    instance = InstanceFactory()
    InstanceFactory(account=instance.account, region="eu-west-1", instance_id=instance.instance_id)
    with pytest.raises(IntegrityError), transaction.atomic():
        InstanceFactory(account=instance.account, region=instance.region, instance_id=instance.instance_id)


def test_an_instance_never_has_two_active_items():
    item = ChangeItemFactory()
    with pytest.raises(IntegrityError), transaction.atomic():
        ChangeItemFactory(instance=item.instance)
    ChangeItemFactory(instance=item.instance, state=ItemState.SKIPPED)  # inactive rows are fine
    item.state = ItemState.APPLIED
    item.save()
    ChangeItemFactory(instance=item.instance)  # once final, a new change may start


def test_batch_status_derives_from_items():
    batch = ChangeBatchFactory()
    items = [ChangeItemFactory(batch=batch) for _ in range(3)]
    assert batch.status == "queued"
    ChangeItem.objects.filter(pk=items[0].pk).update(state=ItemState.PENDING)
    assert batch.status == "running"
    ChangeItem.objects.filter(pk__in=[i.pk for i in items]).update(state=ItemState.PENDING)
    assert batch.status == "pending"
    ChangeItem.objects.filter(pk=items[0].pk).update(state=ItemState.FAILED)
    ChangeItem.objects.filter(pk__in=[items[1].pk, items[2].pk]).update(state=ItemState.APPLIED)
    assert batch.status == "done_with_errors"
    counts = type(batch).objects.with_counts().get(pk=batch.pk).counts()
    assert counts["applied"] == 2 and counts["failed"] == 1 and counts["total"] == 3


def test_enforced_follows_prowler():
    account = AccountFactory()
    required = InstanceFactory(account=account, http_tokens="required")
    disabled = InstanceFactory(account=account, http_tokens="optional", http_endpoint="disabled")
    optional = InstanceFactory(account=account, http_tokens="optional")
    assert set(Instance.objects.enforced()) == {required, disabled}
    assert set(Instance.objects.not_enforced()) == {optional}
    assert required.enforced and disabled.enforced and not optional.enforced


def test_a_batch_account_or_instance_with_items_cannot_be_deleted():
    # ChangeItem.batch, .account and .instance carry no database constraint (bulk inserts):
    # Django's PROTECT is what keeps the audit whole.
    from django.db.models import ProtectedError

    item = ChangeItemFactory()
    with pytest.raises(ProtectedError), transaction.atomic():
        item.batch.delete()
    with pytest.raises(ProtectedError), transaction.atomic():
        item.account.delete()
    with pytest.raises(ProtectedError), transaction.atomic():
        item.instance.delete()
    assert ChangeItem.objects.filter(pk=item.pk, batch=item.batch, account=item.account,
                                     instance=item.instance).exists()
