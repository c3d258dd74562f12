"""The one rule that decides what a change does to each selected instance, and why.

Written once, as database expressions (``Case``/``When`` over annotations), and used by every
path: the confirmation plan aggregates it, PostgreSQL inserts the items with it in one
INSERT ... SELECT, SQLite bulk-creates them from the same rows, and the instance list filters by
it (``outcome=``), so a count on the confirmation page and the list it links to cannot disagree.

The outcomes are tried in order; the first that matches wins:

1. gone / terminated (or shutting down): the change cannot reach the instance;
2. already at the target values;
3. busy: another batch has an active item for the instance (the reason names it);
3a. held, unless the user ticked the owner override: the instance's launch template or Auto
   Scaling group is owned by a managed service (EKS, Elastic Beanstalk, EMR, CloudFormation;
   ``fleet.owners``), or the instance carries such an owner's tags itself — a change made outside
   the owner breaks or drifts it (the reason names the owner);
3b. waived: an active waiver covers it (``Instance.waiver``, its date checked here, at read
   time) and the change would break an IMDSv1 caller, unless the batch overrides waivers;
4. held, only when the change requires IMDSv2 and the user did not override: IMDSv1 calls were
   seen; the last reading failed (AWS's error is the reason); usage was never measured; or the
   last reading is older than ``IMDSWEB_USAGE_STALE_MINUTES``. Missing evidence holds.
5. queued.
"""

from django.conf import settings
from django.db import models
from django.db.models import Case, CharField, F, Func, OuterRef, Q, Subquery, TextField, Value, When
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, Coalesce, Concat, JSONObject

from ..choices import HttpTokens, ItemState, ManagedOwner, SourceKind, Toggle
from ..models import ChangeItem, Instance, LaunchSource
from ..models.inventory import NOT_COUNTED
from ..models.waivers import utc_today
from ..owners import OWNER_TAGS
from ..usage import stale_before


class Outcome(models.TextChoices):
    GONE = "gone", "gone from AWS"
    TERMINATED = "terminated", "terminated or shutting down"
    ALREADY = "already", "already at the target"
    BUSY = "busy", "busy in another batch"
    HELD_OWNER = "held_owner", "owned by a managed service"
    WAIVED = "waived", "waived (exempt until its waiver expires)"
    HELD_CALLS = "held_calls", "IMDSv1 calls seen"
    HELD_ERROR = "held_error", "IMDSv1 use could not be read"
    HELD_UNMEASURED = "held_unmeasured", "IMDSv1 use never measured"
    HELD_STALE = "held_stale", "IMDSv1 use not measured recently"
    QUEUED = "queued", "to change"

    @classmethod
    def unreachable(cls):
        return [cls.GONE, cls.TERMINATED]

    @classmethod
    def held(cls):
        return [cls.HELD_OWNER, cls.HELD_CALLS, cls.HELD_ERROR, cls.HELD_UNMEASURED, cls.HELD_STALE]


class DateText(Func):
    """A timestamp as ``YYYY-MM-DD HH:MM UTC`` text, inside the database (for reasons)."""

    output_field = TextField()

    def as_postgresql(self, compiler, connection, **extra):
        return self.as_sql(
            compiler, connection, template="to_char(%(expressions)s AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI \"UTC\"')",
            **extra,
        )

    def as_sqlite(self, compiler, connection, **extra):
        return self.as_sql(compiler, connection, template="strftime('%%%%Y-%%%%m-%%%%d %%%%H:%%%%M UTC', %(expressions)s)",
                           **extra)


def holds_apply(desired, override_usage):
    """The readiness gate guards only enforcing tokens: that is what breaks an IMDSv1 caller."""
    return not override_usage and desired.get("http_tokens") == HttpTokens.REQUIRED


def already_text(desired):
    return "already " + ", ".join(f"{name}={value}" for name, value in desired.items())


def managed_by():
    """Who manages the instance, as text ("EKS (cluster c, node group n) owns launch template t"),
    NULL when nobody does: the owner of its present launch template or Auto Scaling group (the
    sources sync read their tags), else the owner tags on the instance itself."""
    owner_label = Case(*(When(owner=owner.value, then=Value(owner.label)) for owner in ManagedOwner),
                       default=F("owner"), output_field=TextField())
    kind_label = Case(*(When(kind=kind.value, then=Value(kind.label)) for kind in SourceKind),
                      output_field=TextField())
    source = (
        LaunchSource.objects.filter(account=OuterRef("account_id"), region=OuterRef("region"), gone_at__isnull=True)
        .exclude(owner="")
        .filter(Q(kind=SourceKind.LAUNCH_TEMPLATE, source_id=OuterRef("launch_template_id"))
                | Q(kind=SourceKind.AUTO_SCALING_GROUP, source_id=OuterRef("autoscaling_group")))
        .order_by("kind")
        .annotate(text=Concat(owner_label, Value(" ("), F("owner_detail"), Value(") owns "), kind_label, Value(" "),
                              F("name"), output_field=TextField()))
        .values("text")[:1]
    )
    own_tags = Case(
        *(When(**{"tags__has_key": key}, then=Concat(Value(f"{owner.label} ({key} "), KT(f"tags__{key}"),
                                                     Value(") manages this instance"), output_field=TextField()))
          for owner, keys in OWNER_TAGS for key in keys),
        default=None, output_field=TextField(),
    )
    return Coalesce(Subquery(source, output_field=TextField()), own_tags, output_field=TextField())


def waivers_apply(desired, override_waivers):
    """A waiver exempts from what breaks an IMDSv1 caller: tokens required, or the endpoint off."""
    breaks_v1 = desired.get("http_tokens") == HttpTokens.REQUIRED or desired.get("http_endpoint") == Toggle.DISABLED
    return breaks_v1 and not override_waivers


def waiver_rule(now):
    """(Outcome.WAIVED, condition, reason): the waiver's own date decides, so one past its date
    stops exempting at once, before the expiry task has re-applied the waivers."""
    today = utc_today(now)
    return (
        Outcome.WAIVED,
        Q(waiver__isnull=False, waiver__revoked_at__isnull=True, waiver__expires_on__gte=today),
        Concat(Value("waived until "), Cast("waiver__expires_on", TextField()), Value(" by "), F("waiver__owner"),
               Value(": "), F("waiver__reason"), output_field=TextField()),
    )


def decide(instances, desired, *, override_usage=False, override_owner=False, override_waivers=False, now=None):
    """``instances`` (any Instance queryset) as a queryset annotated with ``outcome``,
    ``item_state`` and ``item_reason`` (and ``busy_batch``, ``item_previous``)."""
    days = settings.IMDSWEB_USAGE_WINDOW_DAYS
    base = Instance.objects.filter(pk__in=instances.order_by().values("pk"))
    busy = ChangeItem.objects.filter(instance=OuterRef("pk"), state__in=ItemState.active()).order_by().values(
        "batch_id")[:1]
    rules = [
        (Outcome.GONE, Q(gone_at__isnull=False), Value("instance no longer exists in AWS")),
        (Outcome.TERMINATED, NOT_COUNTED,
         Concat(Value("instance is "), F("instance_state"), output_field=TextField())),
        (Outcome.ALREADY, Q(**desired), Value(already_text(desired))),
        (Outcome.BUSY, Q(busy_batch__isnull=False),
         Concat(Value("another change is in progress (batch #"), Cast("busy_batch", TextField()), Value(")"),
                output_field=TextField())),
    ]
    if not override_owner:
        base = base.annotate(managed_by=managed_by())
        rules.append((Outcome.HELD_OWNER, Q(managed_by__isnull=False),
                      Concat(F("managed_by"), Value(": a change made outside the owner breaks or drifts it; tick "
                                                    "the owner override to change it anyway"),
                             output_field=TextField())))
    if waivers_apply(desired, override_waivers):
        rules.append(waiver_rule(now))
    if holds_apply(desired, override_usage):
        rules += [
            (Outcome.HELD_CALLS, Q(v1_calls__gt=0),
             Concat(Cast("v1_calls", TextField()),
                    Value(f" IMDSv1 call(s) in the last {days} days; enforcing IMDSv2 would break the caller"),
                    output_field=TextField())),
            (Outcome.HELD_ERROR, Q(usage_error__isnull=False) & ~Q(usage_error=""),
             Concat(Value("IMDSv1 use could not be measured ("), F("usage_error"),
                    Value("); enforcing IMDSv2 could break a caller"), output_field=TextField())),
            (Outcome.HELD_UNMEASURED, Q(usage_synced_at__isnull=True),
             Value("IMDSv1 use never measured; enforcing IMDSv2 could break a caller")),
            (Outcome.HELD_STALE, Q(usage_synced_at__lt=stale_before(now)),
             Concat(Value("IMDSv1 use not measured since "), DateText("usage_synced_at"),
                    Value("; enforcing IMDSv2 could break a caller"), output_field=TextField())),
        ]
    outcome = Case(*(When(condition, then=Value(code.value)) for code, condition, _ in rules),
                   default=Value(Outcome.QUEUED.value), output_field=CharField())
    reason = Case(*(When(condition, then=text) for _, condition, text in rules),
                  default=Value(""), output_field=TextField())
    held = [code.value for code, *_ in rules if code in Outcome.held()]
    state = Case(
        When(outcome=Outcome.QUEUED, then=Value(ItemState.QUEUED.value)),
        When(outcome__in=held, then=Value(ItemState.HELD.value)),
        default=Value(ItemState.SKIPPED.value),
        output_field=CharField(),
    )
    return (
        base.annotate(busy_batch=Subquery(busy))
        .annotate(outcome=outcome)
        .annotate(item_state=state, item_reason=reason, item_previous=JSONObject(**{name: F(name) for name in desired}))
    )
