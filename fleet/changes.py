"""The change service: plan, request, cancel, retry and roll back metadata changes.

The UI, the admin, the management commands and the tests all go through these functions.
A request writes its ChangeBatch and ChangeItem rows in one transaction and hands the work to
Celery only once that transaction has committed; the rows, not the broker, are the truth.

An instance never has two active items: a request skips instances that already have one
(state ``skipped``, with the batch that holds them as the reason), and the database refuses a
second active item even if two requests race.
"""

import logging
import math
from dataclasses import dataclass, field

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, Q
from django.utils import timezone

from . import ratelimit
from .choices import (
    ChangeKind,
    DefaultsHttpTokens,
    DefaultsToggle,
    HttpTokens,
    InstanceState,
    ItemState,
    Toggle,
)
from .models import ChangeBatch, ChangeItem, Instance, MetadataDefaults
from .models.inventory import DEFAULTS_FIELDS, INSTANCE_OPTION_FIELDS

log = logging.getLogger(__name__)

REQUIRE_IMDSV2 = {"http_tokens": HttpTokens.REQUIRED.value}
# Name patterns of hosts that usually run containers; hop limit 1 breaks their pods' IMDSv2.
CONTAINER_HOST_PATTERN = r"(eks|ecs|k8s|kube|docker|container|nomad)"
BULK_SIZE = 5000


class ChangeRefused(Exception):
    """A change the service will not queue; the message is meant for the user."""


# ---------------------------------------------------------------- validation


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


# ---------------------------------------------------------------- planning


def _at_target(desired):
    return Q(**desired)


def _not_actionable():
    """Instances a change cannot reach: gone from AWS, or terminated."""
    return Q(gone_at__isnull=False) | Q(instance_state__in=[InstanceState.TERMINATED, InstanceState.SHUTTING_DOWN])


def _busy():
    return Q(change_items__state__in=ItemState.active())


def _held(desired, override_usage):
    """IMDSv1 calls seen in the window make enforcing tokens risky: hold those instances."""
    if override_usage or desired.get("http_tokens") != HttpTokens.REQUIRED:
        return Q(pk__in=[])
    return Q(v1_calls__gt=0)


def estimate_seconds(per_region_counts):
    """Time to submit, from AWS's bucket for ModifyInstanceMetadataOptions: account/regions run
    in parallel, each spends its burst at once and then the refill rate."""
    capacity, rate = ratelimit.limits_for("ModifyInstanceMetadataOptions")
    worst = 0.0
    for count in per_region_counts:
        worst = max(worst, max(0, count - capacity) / rate)
    return math.ceil(worst + (1 if per_region_counts else 0))


@dataclass
class Plan:
    total: int = 0
    to_change: int = 0
    already: int = 0
    busy: int = 0
    held: int = 0
    unreachable: int = 0
    stopped: int = 0
    hop_limit_one_containers: int = 0
    per_region: list = field(default_factory=list)
    estimated_seconds: int = 0
    warnings: list = field(default_factory=list)


def plan_change(instances, desired, override_usage=False):
    """What a change would do to ``instances``, in a fixed handful of queries."""
    desired = clean_instance_desired(desired)
    already = _at_target(desired) & ~_not_actionable()
    unreachable = _not_actionable()
    actionable = ~already & ~unreachable
    busy_ids = ChangeItem.objects.filter(state__in=ItemState.active(), instance__in=instances).values("instance_id")
    busy = Q(pk__in=busy_ids) & actionable
    held = _held(desired, override_usage) & actionable & ~Q(pk__in=busy_ids)
    queued = actionable & ~Q(pk__in=busy_ids) & ~_held(desired, override_usage)
    totals = instances.aggregate(
        total=Count("pk"),
        already=Count("pk", filter=already),
        unreachable=Count("pk", filter=unreachable),
        busy=Count("pk", filter=busy),
        held=Count("pk", filter=held),
        to_change=Count("pk", filter=queued),
        stopped=Count("pk", filter=queued & Q(instance_state__in=[InstanceState.STOPPED, InstanceState.STOPPING])),
        hop_one=Count(
            "pk",
            filter=queued
            & Q(hop_limit=1)
            & Q(name__iregex=CONTAINER_HOST_PATTERN)
            & ~Q(http_tokens=HttpTokens.REQUIRED)
            & Q(http_endpoint=Toggle.ENABLED),
        ),
    )
    rows = (
        instances.values("account__account_id", "account__name", "region")
        .annotate(to_change=Count("pk", filter=queued), already=Count("pk", filter=already))
        .order_by("account__account_id", "region")
    )
    plan = Plan(
        total=totals["total"],
        to_change=totals["to_change"],
        already=totals["already"],
        busy=totals["busy"],
        held=totals["held"],
        unreachable=totals["unreachable"],
        stopped=totals["stopped"],
        hop_limit_one_containers=totals["hop_one"] if desired.get("hop_limit", 1) == 1 else 0,
        per_region=[
            {
                "account_id": row["account__account_id"],
                "account_name": row["account__name"],
                "region": row["region"],
                "to_change": row["to_change"],
                "already": row["already"],
            }
            for row in rows
        ],
    )
    plan.estimated_seconds = estimate_seconds([row["to_change"] for row in plan.per_region])
    if plan.stopped:
        plan.warnings.append(
            f"{plan.stopped} stopped instance(s) accept the change now but apply it only when next started; "
            "they stay pending until then."
        )
    if plan.hop_limit_one_containers:
        plan.warnings.append(
            f"{plan.hop_limit_one_containers} instance(s) look like container hosts and have hop limit 1: "
            "with IMDSv2 required, containers behind a bridge need hop limit 2 (some CNIs 3)."
        )
    if plan.held:
        plan.warnings.append(
            f"{plan.held} instance(s) made IMDSv1 calls in the last {settings.IMDSWEB_USAGE_WINDOW_DAYS} days "
            "and will be held back unless you override."
        )
    if plan.busy:
        plan.warnings.append(f"{plan.busy} instance(s) already have a change in progress and will be skipped.")
    return plan


# ---------------------------------------------------------------- requesting


def _dispatch_on_commit(batch):
    def dispatch():
        from .tasks import dispatch_batch

        try:
            dispatch_batch.delay(batch.pk)
        except Exception as exc:  # broker down: the sweeper re-dispatches queued rows later
            log.warning("could not hand batch %s to the broker (%s); the sweeper will pick it up", batch.pk, exc)

    transaction.on_commit(dispatch)


def _skip_reason(row, desired, busy_batches, override_usage):
    if row["gone_at"] is not None:
        return ItemState.SKIPPED, "instance no longer exists in AWS"
    if row["instance_state"] in (InstanceState.TERMINATED, InstanceState.SHUTTING_DOWN):
        return ItemState.SKIPPED, f"instance is {row['instance_state']}"
    if all(row[name] == value for name, value in desired.items()):
        return ItemState.SKIPPED, "already " + ", ".join(f"{name}={value}" for name, value in desired.items())
    if row["pk"] in busy_batches:
        return ItemState.SKIPPED, f"another change is in progress (batch #{busy_batches[row['pk']]})"
    if (
        not override_usage
        and desired.get("http_tokens") == HttpTokens.REQUIRED
        and row["v1_calls"]
        and row["v1_calls"] > 0
    ):
        return ItemState.HELD, (
            f"{row['v1_calls']} IMDSv1 call(s) in the last {settings.IMDSWEB_USAGE_WINDOW_DAYS} days; "
            "enforcing IMDSv2 would break the caller"
        )
    return ItemState.QUEUED, ""


def _create_items_python(batch, instances, desired, override_usage, now):
    fields = ["pk", "account_id", "region", "gone_at", "instance_state", "v1_calls", *desired]
    rows = list(instances.order_by().values(*fields))
    busy_batches = dict(
        ChangeItem.objects.filter(state__in=ItemState.active(), instance__in=instances.values("pk"))
        .values_list("instance_id", "batch_id")
        .iterator()
    )
    items = []
    for row in rows:
        state, reason = _skip_reason(row, desired, busy_batches, override_usage)
        items.append(
            ChangeItem(
                batch=batch,
                account_id=row["account_id"],
                region=row["region"],
                instance_id=row["pk"],
                previous={name: row[name] for name in desired},
                state=state,
                reason=reason,
                finished_at=None if state == ItemState.QUEUED else now,
            )
        )
    ChangeItem.objects.bulk_create(items, batch_size=BULK_SIZE)
    return len(items)


def _create_items_postgresql(batch, instances, desired, override_usage, now):
    """The same rules as ``_skip_reason``, decided by the database in one INSERT ... SELECT: a
    100,000-instance request builds no Python object per instance (docs/benchmarks.md, P4)."""
    quote = connection.ops.quote_name
    instance_table, item_table = quote(Instance._meta.db_table), quote(ChangeItem._meta.db_table)

    def col(name):
        return "i." + quote(Instance._meta.get_field(name).column)

    held = not override_usage and desired.get("http_tokens") == HttpTokens.REQUIRED
    days = settings.IMDSWEB_USAGE_WINDOW_DAYS
    # (condition, its params, state, reason SQL, its params), tried in order like _skip_reason.
    rules = [
        (f"{col('gone_at')} IS NOT NULL", [], ItemState.SKIPPED, "%s", ["instance no longer exists in AWS"]),
        (f"{col('instance_state')} = ANY(%s)", [[InstanceState.TERMINATED.value, InstanceState.SHUTTING_DOWN.value]],
         ItemState.SKIPPED, f"'instance is ' || {col('instance_state')}", []),
        (" AND ".join(f"{col(name)} = %s" for name in desired), list(desired.values()), ItemState.SKIPPED, "%s",
         ["already " + ", ".join(f"{name}={value}" for name, value in desired.items())]),
        ("busy.id IS NOT NULL", [], ItemState.SKIPPED,
         "'another change is in progress (batch #' || busy.batch_id || ')'", []),
        (f"%s AND {col('v1_calls')} > 0", [held], ItemState.HELD, f"{col('v1_calls')}::text || %s",
         [f" IMDSv1 call(s) in the last {days} days; enforcing IMDSv2 would break the caller"]),
    ]
    state_sql = "CASE " + " ".join(f"WHEN {condition} THEN %s" for condition, *_ in rules) + " ELSE %s END"
    state_params = [p for condition, params, state, *_ in rules for p in (*params, state.value)]
    state_params.append(ItemState.QUEUED.value)
    reason_sql = "CASE " + " ".join(f"WHEN {condition} THEN {reason}" for condition, _, _, reason, _ in rules)
    reason_sql += " ELSE '' END"
    reason_params = [p for _, params, _, _, reason_params in rules for p in (*params, *reason_params)]
    previous_sql = ", ".join(f"%s, {col(name)}" for name in desired)
    selected_sql, selected_params = instances.order_by().values("pk").query.sql_with_params()
    sql = f"""
        INSERT INTO {item_table} (batch_id, account_id, region, instance_id, desired, previous, state, reason,
                                  attempts, request_id, error_code, error_message, created_at, updated_at,
                                  finished_at, breakage_suspected)
        SELECT %s, account_id, region, id, '{{}}'::jsonb, previous, state, reason, 0, '', '', '', %s, %s,
               CASE WHEN state = %s THEN NULL ELSE %s::timestamptz END, false
        FROM (
            SELECT i.id, {col("account")} AS account_id, {col("region")} AS region,
                   jsonb_build_object({previous_sql}) AS previous, {state_sql} AS state, {reason_sql} AS reason
            FROM {instance_table} i
            LEFT JOIN {item_table} busy ON busy.instance_id = i.id AND busy.state = ANY(%s)
            WHERE i.id IN ({selected_sql})
        ) AS decided
        ORDER BY id
    """
    params = [
        batch.pk, now, now, ItemState.QUEUED.value, now,
        *desired, *state_params, *reason_params,
        [state.value for state in ItemState.active()],
        *selected_params,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def request_change(user, instances, desired, *, comment="", selection="", dry_run=False, override_usage=False):
    """Queue a change of instance metadata options for ``instances``. Returns the batch."""
    try:
        desired = clean_instance_desired(desired)
    except ValidationError as exc:
        raise ChangeRefused(" ".join(exc.messages)) from exc
    create_items = _create_items_postgresql if connection.vendor == "postgresql" else _create_items_python
    try:
        with transaction.atomic():
            batch = ChangeBatch.objects.create(
                created_by=user if user and user.is_authenticated else None,
                kind=ChangeKind.INSTANCE_OPTIONS,
                desired=desired,
                selection=selection[:2000],
                comment=comment,
                dry_run=dry_run,
                override_usage=override_usage,
            )
            count = create_items(batch, instances, desired, override_usage, timezone.now())
            if not count:
                raise ChangeRefused("No instances selected.")  # rolls the empty batch back
            _dispatch_on_commit(batch)
    except IntegrityError as exc:
        raise ChangeRefused("Another change for some of these instances was queued at the same moment; try again.") from exc
    log.info("batch %s queued by %s: %s on %d instance(s)", batch.pk, user, desired, count)
    return batch


def request_defaults_change(user, targets, desired, *, comment="", dry_run=False):
    """Queue a change of account-level IMDS defaults for (account, region) pairs."""
    try:
        desired = clean_defaults_desired(desired)
    except ValidationError as exc:
        raise ChangeRefused(" ".join(exc.messages)) from exc
    if not targets:
        raise ChangeRefused("No account/region selected.")
    managed = {
        (d.account_id, d.region): d.managed_exception_message
        for d in MetadataDefaults.objects.filter(managed_by="declarative-policy")
    }
    for account, region in targets:
        if region not in account.regions:
            raise ChangeRefused(f"{region} is not a region of account {account.account_id}.")
        if (account.pk, region) in managed:
            reason = managed[(account.pk, region)] or "the defaults are managed by a declarative policy"
            raise ChangeRefused(f"{account.account_id}/{region} is managed by a declarative policy: {reason}")
    current = {(d.account_id, d.region): d.values for d in MetadataDefaults.objects.filter(
        account__in=[account for account, _ in targets])}
    try:
        with transaction.atomic():
            batch = ChangeBatch.objects.create(
                created_by=user if user and user.is_authenticated else None,
                kind=ChangeKind.ACCOUNT_DEFAULTS,
                desired=desired,
                selection=", ".join(f"{account.account_id}/{region}" for account, region in targets)[:2000],
                comment=comment,
                dry_run=dry_run,
            )
            previous_of = {
                key: {name: values[name] for name in desired} for key, values in current.items()
            }
            ChangeItem.objects.bulk_create(
                ChangeItem(
                    batch=batch,
                    account=account,
                    region=region,
                    previous=previous_of.get((account.pk, region), {}),
                )
                for account, region in targets
            )
            _dispatch_on_commit(batch)
    except IntegrityError as exc:
        raise ChangeRefused("A defaults change for one of these account/regions is already in progress.") from exc
    return batch


# ---------------------------------------------------------------- after the fact


def cancel_queued(batch, user):
    """Cancel the items no worker has claimed yet. Items already sent go on."""
    who = getattr(user, "username", None) or "system"
    return batch.items.filter(state=ItemState.QUEUED).update(
        state=ItemState.CANCELLED, reason=f"cancelled by {who}", finished_at=timezone.now()
    )


def retry_failed(batch, user):
    """Queue failed and stuck items again (except where the instance has another active item)."""
    busy = ChangeItem.objects.filter(state__in=ItemState.active(), instance__isnull=False).values("instance_id")
    retry = batch.items.filter(state__in=[ItemState.FAILED, ItemState.STUCK]).exclude(instance_id__in=busy)
    with transaction.atomic():
        count = retry.update(
            state=ItemState.QUEUED, error_code="", error_message="", reason="", finished_at=None, claimed_at=None
        )
        if count:
            _dispatch_on_commit(batch)
    return count


def rollback(batch, user, comment=""):
    """A new batch that restores each applied item's previous values."""
    applied = list(batch.items.filter(state=ItemState.APPLIED).select_related("account", "instance"))
    if not applied:
        raise ChangeRefused("Nothing in this batch was applied, so there is nothing to roll back.")
    with transaction.atomic():
        rollback_batch = ChangeBatch.objects.create(
            created_by=user if user and user.is_authenticated else None,
            kind=batch.kind,
            desired={},
            selection=f"rollback of batch #{batch.pk}",
            comment=comment or f"Rollback of batch #{batch.pk}",
            rollback_of=batch,
        )
        busy = set(
            ChangeItem.objects.filter(
                state__in=ItemState.active(), instance__in=batch.items.filter(state=ItemState.APPLIED).values("instance")
            ).values_list("instance_id", flat=True)
        )
        items = []
        for item in applied:
            restore = {name: value for name, value in item.previous.items() if value is not None}
            state, reason = ItemState.QUEUED, ""
            if item.instance_id in busy:
                state, reason = ItemState.SKIPPED, "another change is in progress"
            elif not restore:
                state, reason = ItemState.SKIPPED, "no previous values recorded"
            current = item.instance.options if item.instance else {}
            items.append(
                ChangeItem(
                    batch=rollback_batch,
                    account=item.account,
                    region=item.region,
                    instance=item.instance,
                    desired=restore,
                    previous={name: current.get(name) for name in restore} if item.instance else item.target_values,
                    state=state,
                    reason=reason,
                )
            )
        ChangeItem.objects.bulk_create(items, batch_size=BULK_SIZE)
        _dispatch_on_commit(rollback_batch)
    return rollback_batch


def instances_for(account_id=None, region=None):
    """Present instances, narrowed like the command line and the bulk button narrow them."""
    qs = Instance.objects.present()
    if account_id:
        qs = qs.filter(account__account_id=account_id)
    if region:
        qs = qs.filter(region=region)
    return qs
