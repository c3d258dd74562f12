"""Queue an instance change through the API: plan first (the confirmation page's figures and a
plan token), then queue with the token. Both go through the confirmation page's own form
(``InstanceChangeForm``) and services (``changes.plan_change`` / ``changes.request_change``), so the
API refuses exactly what the UI refuses; a token is signed, names its user and expires.
"""

from dataclasses import asdict

from django.core import signing
from django.http import QueryDict
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import permissions, serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import changes
from ..choices import WaveMode
from ..forms import InstanceChangeForm
from ..models import ChangeBatch
from ..models.inventory import INSTANCE_OPTION_FIELDS
from .serializers import ChangeBatchSerializer

SALT = "fleet.api.plan"
PLAN_MAX_AGE = 30 * 60  # seconds a plan token stays good for
PLAN_FIELDS = ("ids", "filter", *INSTANCE_OPTION_FIELDS, "override_usage", "override_owner", "override_waivers")


class CanQueueChange(permissions.BasePermission):
    message = "Your role can look at the fleet but not change it. Ask an admin for the operator role."

    def has_permission(self, request, view):
        return request.user.has_perm("fleet.queue_change")


class PlanRequest(serializers.Serializer):
    ids = serializers.ListField(child=serializers.CharField(), required=False, help_text="Instance ids (≤ 500)")
    filter = serializers.CharField(required=False, help_text="An instance list query string, e.g. http_tokens=optional")
    http_tokens = serializers.CharField(required=False)
    hop_limit = serializers.IntegerField(required=False)
    http_endpoint = serializers.CharField(required=False)
    http_protocol_ipv6 = serializers.CharField(required=False)
    instance_metadata_tags = serializers.CharField(required=False)
    override_usage = serializers.BooleanField(required=False, default=False)
    override_owner = serializers.BooleanField(
        required=False, default=False,
        help_text="Also change instances whose source a managed service owns (EKS, Beanstalk, EMR, CloudFormation)",
    )
    override_waivers = serializers.BooleanField(required=False, default=False,
                                                help_text="Apply to instances under an active waiver too.")


class QueueRequest(serializers.Serializer):
    plan_token = serializers.CharField()
    comment = serializers.CharField(required=False, allow_blank=True, default="")
    dry_run = serializers.BooleanField(required=False, default=False)
    # A staged rollout, a scheduled start, a recurring window: as on the confirmation page.
    wave_mode = serializers.ChoiceField(choices=WaveMode.choices, required=False)
    canary = serializers.CharField(required=False, allow_blank=True,
                                   help_text="N, a percentage (10%), key=value, or accounts/OUs one wave per line")
    rest_waves = serializers.IntegerField(required=False)
    soak_minutes = serializers.FloatField(required=False)
    start_at = serializers.DateTimeField(required=False)
    window_days = serializers.ListField(child=serializers.IntegerField(), required=False, help_text="0 = Monday")
    window_start = serializers.CharField(required=False, help_text="HH:MM")
    window_end = serializers.CharField(required=False, help_text="HH:MM")
    window_tz = serializers.CharField(required=False, help_text="e.g. Europe/Berlin")


ROLLOUT_FIELDS = ("wave_mode", "canary", "rest_waves", "soak_minutes", "start_at", "window_days", "window_start",
                  "window_end", "window_tz")


def _form_data(payload):
    """The API's JSON as the confirmation form's POST data."""
    if not isinstance(payload, dict):
        raise ValidationError({"non_field_errors": ["Send a JSON object."]})
    data = QueryDict(mutable=True)
    for name, value in payload.items():
        if name == "ids":
            data.setlist("ids", [str(v) for v in value] if isinstance(value, list) else [str(value)])
        elif isinstance(value, bool):
            if value:
                data[name] = "on"
        elif value is not None:
            data[name] = str(value)
    return data


def _valid_form(data):
    form = InstanceChangeForm(data)
    if not form.is_valid():
        errors = form.errors.get_json_data()
        raise ValidationError({("non_field_errors" if k == "__all__" else k): [e["message"] for e in v]
                               for k, v in errors.items()})
    return form


class PlanView(APIView):
    permission_classes = [permissions.IsAuthenticated, CanQueueChange]

    @extend_schema(request=PlanRequest, responses=inline_serializer("Plan", {
        "plan_token": serializers.CharField(), "desired": serializers.DictField(), "selection": serializers.CharField(),
        "total": serializers.IntegerField(), "to_change": serializers.IntegerField(), "already": serializers.IntegerField(),
        "busy": serializers.IntegerField(), "waived": serializers.IntegerField(), "held": serializers.IntegerField(), "unreachable": serializers.IntegerField(),
        "stopped": serializers.IntegerField(), "hop_limit_one_containers": serializers.IntegerField(),
        "per_region": serializers.ListField(child=serializers.DictField()),
        "estimated_seconds": serializers.IntegerField(), "estimate_assumptions": serializers.CharField(),
        "warnings": serializers.ListField(child=serializers.CharField()),
    }))
    def post(self, request):
        payload = request.data if isinstance(request.data, dict) else None
        unknown = set(payload or {}) - set(PLAN_FIELDS)
        if unknown:
            raise ValidationError({name: ["Unknown field."] for name in sorted(unknown)})
        data = _form_data(payload)
        form = _valid_form(data)
        plan = changes.plan_change(form.instances, form.desired, override_usage=form.cleaned_data["override_usage"],
                                   override_owner=form.cleaned_data["override_owner"],
                                   override_waivers=form.cleaned_data["override_waivers"])
        token = signing.dumps({"user": request.user.pk, "data": {k: data.getlist(k) for k in data}}, salt=SALT,
                              compress=True)
        return Response({"plan_token": token, "desired": form.desired, "selection": form.selection, **asdict(plan)})


class QueueView(APIView):
    permission_classes = [permissions.IsAuthenticated, CanQueueChange]

    @extend_schema(request=QueueRequest, responses={201: ChangeBatchSerializer})
    def post(self, request):
        body = QueueRequest(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            plan = signing.loads(body.validated_data["plan_token"], salt=SALT, max_age=PLAN_MAX_AGE)
        except signing.SignatureExpired:
            raise ValidationError({"plan_token": ["This plan has expired: plan again."]}) from None
        except signing.BadSignature:
            raise ValidationError({"plan_token": ["Not a plan token from this server."]}) from None
        if plan.get("user") != request.user.pk:
            raise ValidationError({"plan_token": ["This plan was made by another user."]})
        data = QueryDict(mutable=True)
        for name, values in plan["data"].items():
            data.setlist(name, values)
        data["comment"] = body.validated_data["comment"]
        if body.validated_data["dry_run"]:
            data["dry_run"] = "on"
        for name in ROLLOUT_FIELDS:
            if name == "window_days" and name in request.data:
                data.setlist(name, [str(day) for day in body.validated_data[name]])
            elif name in body.validated_data:
                data[name] = str(request.data[name])
        form = _valid_form(data)  # again: the fleet may have changed since the plan
        token = request.auth
        selection = form.selection + (f" (API token “{token.name}”)" if token is not None else " (API)")
        try:
            batch = changes.request_change(
                request.user, form.instances, form.desired, comment=form.cleaned_data["comment"], selection=selection,
                dry_run=form.cleaned_data["dry_run"], override_usage=form.cleaned_data["override_usage"],
                override_owner=form.cleaned_data["override_owner"],
                override_waivers=form.cleaned_data["override_waivers"],
                rollout=form.rollout,
            )
        except changes.ChangeRefused as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        batch = ChangeBatch.objects.with_counts().select_related("created_by", "approved_by").get(pk=batch.pk)
        return Response(ChangeBatchSerializer(batch).data, status=status.HTTP_201_CREATED)
