"""What a new instance gets: launch-time IMDS semantics that moto lacks.

Owns (see docs/simulator.md, "Launches"):

- the order of precedence of instance metadata options at launch, per option: the launch's own
  ``MetadataOptions`` (RunInstances), then the launch template version's or launch
  configuration's, then the account/region default, then the AMI (``ImdsSupport = v2.0`` gives
  HttpTokens ``required`` and hop limit 2), then EC2's defaults (``optional``, 1, enabled,
  disabled, disabled);
- account-level enforcement (``HttpTokensEnforced = enabled``): a launch whose HttpTokens does
  not resolve to ``required`` is refused with ``UnsupportedOperation``; an Auto Scaling group
  whose launch is refused launches nothing (its scaling activity fails, the API call succeeds);
- launch templates: ``CreateLaunchTemplateVersion`` honours ``SourceVersion``;
  ``DescribeLaunchTemplates`` honours ``Filters``, ``MaxResults`` and ``NextToken``;
  ``DescribeLaunchTemplateVersions`` pages with ``NextToken`` instead of truncating;
- Auto Scaling groups launch the template version they name (moto launches the default); a
  group with a ``MixedInstancesPolicy`` launches its highest-priority override (the first, as
  the ``prioritized`` strategy does and as moto assumes), from that override's own
  ``LaunchTemplateSpecification`` when it names one (moto ignores it) and as its instance type;
- AMI ``ImdsSupport``: kept by ``RegisterImage`` and ``ModifyImageAttribute`` (which cannot undo
  it), returned by ``DescribeImages`` and ``DescribeImageAttribute``.

moto runs in-process, so these are patches of moto's own classes, installed once by
``install(model)``: both the RunInstances API and moto's Auto Scaling (which calls the EC2
backend directly) go through the same ``run_instances``. Written by hand because no library
models EC2's launch semantics.
"""

from __future__ import annotations

import fnmatch
import logging

from moto.autoscaling.models import ASG_NAME_TAG, FakeAutoScalingGroup
from moto.core.responses import ActionResult, EmptyResult
from moto.ec2.exceptions import EC2ClientError, InvalidParameterValue, MissingParameterError
from moto.ec2.models.amis import Ami
from moto.ec2.models.instances import InstanceBackend
from moto.ec2.responses.amis import AmisResponse
from moto.ec2.responses.launch_templates import LaunchTemplates

log = logging.getLogger(__name__)

EC2_DEFAULTS = {
    "HttpTokens": "optional",
    "HttpPutResponseHopLimit": 1,
    "HttpEndpoint": "enabled",
    "HttpProtocolIpv6": "disabled",
    "InstanceMetadataTags": "disabled",
}
AMI_V2 = {"HttpTokens": "required", "HttpPutResponseHopLimit": 2}
OPTION_VALUES = {
    "HttpTokens": ("optional", "required"),
    "HttpEndpoint": ("enabled", "disabled"),
    "HttpProtocolIpv6": ("enabled", "disabled"),
    "InstanceMetadataTags": ("enabled", "disabled"),
}
ENFORCED_MESSAGE = "You can't launch instances with IMDSv1 because httpTokensEnforced is enabled for this account."
LT_FILTERS = ("launch-template-name", "tag-key")
PAGE_LIMITS = {"DescribeLaunchTemplates": (1, 200), "DescribeLaunchTemplateVersions": (1, 200)}

_model = None  # the ImdsModel whose account defaults launches read


class UnsupportedOperation(EC2ClientError):
    def __init__(self, message: str):
        super().__init__("UnsupportedOperation", message)


def checked_options(options: dict | None, where: str) -> dict:
    """Validate a ``MetadataOptions`` structure (unset members are simply absent)."""
    options = {k: v for k, v in (options or {}).items() if v not in (None, "")}
    for name, allowed in OPTION_VALUES.items():
        if name in options and options[name] not in allowed:
            raise InvalidParameterValue(
                f"Value ({options[name]}) for parameter {where}.{name} is invalid. Valid values: {', '.join(allowed)}."
            )
    if "HttpPutResponseHopLimit" in options:
        raw = options["HttpPutResponseHopLimit"]
        try:
            hop = int(raw)
        except (TypeError, ValueError):
            hop = 0
        if not 1 <= hop <= 64:
            raise InvalidParameterValue(
                f"Value ({raw}) for parameter {where}.HttpPutResponseHopLimit is invalid. Valid values: 1 through 64."
            )
        options["HttpPutResponseHopLimit"] = hop
    return {k: v for k, v in options.items() if k in EC2_DEFAULTS}


def resolve(launch: dict, source: dict, account: dict, ami_imds_support: str | None) -> dict:
    """The options a new instance gets, per option, highest precedence first."""
    levels = [launch, source, account, AMI_V2 if ami_imds_support == "v2.0" else {}, EC2_DEFAULTS]
    return {name: next(level[name] for level in levels if level.get(name) is not None) for name in EC2_DEFAULTS}


def _account_settings(account_id: str, region: str) -> tuple[dict, bool]:
    if _model is None:
        return {}, False
    settings = dict(_model.defaults(account_id, region).settings)
    enforced = settings.pop("HttpTokensEnforced", None) == "enabled"
    return settings, enforced


# --- RunInstances (API and Auto Scaling) ------------------------------------------------------
_original_run_instances = InstanceBackend.run_instances


def _run_instances(self, image_id, count, user_data, security_group_names, **kwargs):
    launch = checked_options(kwargs.get("metadata_options"), "MetadataOptions")
    source: dict = {}
    if kwargs.get("launch_template"):
        version = self._get_template_from_args(kwargs["launch_template"])
        source = checked_options(version.data.get("MetadataOptions"), "LaunchTemplateData.MetadataOptions")
        image_id = image_id or version.image_id
    elif kwargs.get("launch_config") is not None:
        source = checked_options(kwargs["launch_config"].metadata_options, "MetadataOptions")
    ami = self.amis.get(image_id) if image_id else None
    account, enforced = _account_settings(self.account_id, self.region_name)
    options = resolve(launch, source, account, getattr(ami, "imds_support", None))
    if enforced and options["HttpTokens"] != "required":
        raise UnsupportedOperation(ENFORCED_MESSAGE)
    kwargs["metadata_options"] = options
    reservation = _original_run_instances(self, image_id, count, user_data, security_group_names, **kwargs)
    if _model is not None:
        for instance in reservation.instances:
            _model.set_instance_options(instance, {}, pending=False)  # installs SimMetadataOptions
    return reservation


def _replace_autoscaling_group_instances(self, count_needed, propagated_tags):
    """moto's, launching the template version the group names, and failing like AWS's scaling
    activity (nothing launched, the API call succeeds) when the launch is refused."""
    propagated_tags[ASG_NAME_TAG] = self.name
    propagated_tags.update(self.instance_tags)
    subnet_id = self.vpc_zone_identifier.split(",")[0] if self.vpc_zone_identifier else None
    launch_template = None
    image_id, instance_type = self.image_id, self.instance_type
    if self.ec2_launch_template:
        launch_template = {"LaunchTemplateId": self.ec2_launch_template.id, "Version": self.launch_template_version}
    override = _priority_override(self)
    if override:
        instance_type = override.get("InstanceType") or instance_type
        spec = override.get("LaunchTemplateSpecification")
        if spec:
            ec2 = self.autoscaling_backend.ec2_backend
            chosen = (ec2.get_launch_template(spec["LaunchTemplateId"]) if spec.get("LaunchTemplateId")
                      else ec2.get_launch_template_by_name(spec.get("LaunchTemplateName")))
            launch_template = {"LaunchTemplateId": chosen.id, "Version": spec.get("Version") or "$Default"}
            image_id = None  # the override's template version names its AMI
    try:
        reservation = self.autoscaling_backend.ec2_backend.run_instances(
            image_id,
            count_needed,
            self.user_data,
            self.security_groups,
            instance_type=instance_type,
            tags={"instance": propagated_tags},
            placement=self.availability_zones[0] if self.availability_zones else None,
            launch_config=self.launch_config,
            launch_template=launch_template,
            is_instance_type_default=False,
            associate_public_ip=self.launch_config.associate_public_ip_address if self.launch_config else None,
            subnet_id=subnet_id,
        )
    except UnsupportedOperation as exc:
        self.sim_failed_launches = getattr(self, "sim_failed_launches", []) + [exc.message]
        log.info("scaling activity of %s failed: %s", self.name, exc.message)
        return
    from moto.autoscaling.models import InstanceState

    for instance in reservation.instances:
        instance.autoscaling_group = self
        self.instance_states.append(
            InstanceState(instance, protected_from_scale_in=self.new_instances_protected_from_scale_in)
        )


def _priority_override(group) -> dict | None:
    policy = group.mixed_instances_policy or {}
    overrides = (policy.get("LaunchTemplate") or {}).get("Overrides") or []
    return overrides[0] if overrides else None


# --- launch templates -------------------------------------------------------------------------
def _page_bounds(response, action: str, total: int) -> tuple[int, int]:
    low, high = PAGE_LIMITS[action]
    raw_max = response._get_param("MaxResults")
    token = response._get_param("NextToken")
    if raw_max is not None:
        max_results = int(raw_max)
        if not low <= max_results <= high:
            raise InvalidParameterValue(f"MaxResults must be between {low} and {high}.")
    else:
        max_results = high
    start = 0
    if token:
        if not str(token).isdigit() or int(token) > total:
            raise InvalidParameterValue(f"The specified NextToken is not valid: {token}")
        start = int(token)
    return start, start + max_results


def _template_matches(template, filters: list[dict]) -> bool:
    tags = {tag["key"]: tag["value"] for tag in template.get_tags()}
    for entry in filters:
        name, values = entry.get("Name", ""), entry.get("Values", [])
        if name == "launch-template-name":
            candidates = [template.name]
        elif name == "tag-key":
            candidates = list(tags)
        elif name.startswith("tag:"):
            key = name[4:]
            candidates = [tags[key]] if key in tags else []
        else:
            raise InvalidParameterValue(f"The filter '{name}' is invalid")
        if not any(fnmatch.fnmatchcase(c, v) for c in candidates for v in values):
            return False
    return True


def _template_summary(response, template) -> dict:
    return {
        "CreateTime": template.create_time,
        "CreatedBy": f"arn:{response.partition}:iam::{response.current_account}:root",
        "DefaultVersionNumber": template.default_version_number,
        "LatestVersionNumber": template.latest_version_number,
        "LaunchTemplateId": template.id,
        "LaunchTemplateName": template.name,
        "Tags": template.get_tags(),
    }


def _version_summary(response, template, version) -> dict:
    return {
        "CreateTime": version.create_time,
        "CreatedBy": f"arn:{response.partition}:iam::{response.current_account}:root",
        "DefaultVersion": template.is_default(version),
        "LaunchTemplateData": version.data,
        "LaunchTemplateId": template.id,
        "LaunchTemplateName": template.name,
        "VersionDescription": version.description,
        "VersionNumber": version.number,
    }


def describe_launch_templates(self) -> ActionResult:
    names = self._get_param("LaunchTemplateNames", [])
    ids = self._get_param("LaunchTemplateIds", [])
    filters = self._get_param("Filters", []) or self._get_param("Filter", [])
    self.error_on_dryrun()
    templates = self.ec2_backend.describe_launch_templates(template_names=names, template_ids=ids)
    if ids:
        missing = sorted(set(ids) - {t.id for t in templates})
        if missing:
            raise EC2ClientError(
                "InvalidLaunchTemplateId.NotFound", f"The specified launch template, with template ID {missing[0]}, does not exist."
            )
    templates = [t for t in templates if _template_matches(t, filters)]
    start, end = _page_bounds(self, "DescribeLaunchTemplates", len(templates))
    result = {"LaunchTemplates": [_template_summary(self, t) for t in templates[start:end]]}
    if end < len(templates):
        result["NextToken"] = str(end)
    return ActionResult(result)


def describe_launch_template_versions(self) -> ActionResult:
    versions = self._get_param("Versions", [])
    self.error_on_dryrun()
    found = self.ec2_backend.describe_launch_template_versions(
        template_name=self._get_param("LaunchTemplateName"),
        template_id=self._get_param("LaunchTemplateId"),
        versions=versions,
        min_version=self._get_int_param("MinVersion"),
        max_version=self._get_int_param("MaxVersion"),
        max_results=10**9,
    )
    seen, pairs = set(), []
    for template, version in found:  # $Default and $Latest of one template may be one version
        if (template.id, version.number) not in seen:
            seen.add((template.id, version.number))
            pairs.append((template, version))
    start, end = _page_bounds(self, "DescribeLaunchTemplateVersions", len(pairs))
    result = {"LaunchTemplateVersions": [_version_summary(self, t, v) for t, v in pairs[start:end]]}
    if end < len(pairs):
        result["NextToken"] = str(end)
    return ActionResult(result)


def create_launch_template_version(self) -> ActionResult:
    name = self._get_param("LaunchTemplateName")
    template_id = self._get_param("LaunchTemplateId")
    if not (name or template_id):
        raise MissingParameterError("launch template ID or launch template name")
    backend = self.ec2_backend
    template = backend.get_launch_template(template_id) if template_id else backend.get_launch_template_by_name(name)
    sent = self._get_param("LaunchTemplateData", {}) or {}
    if "MetadataOptions" in sent:
        checked_options(sent["MetadataOptions"], "LaunchTemplateData.MetadataOptions")
    source_version = self._get_param("SourceVersion")
    self.error_on_dryrun()
    data = dict(sent)
    if source_version:
        # "The new version inherits the same launch parameters as the source version, except for
        # parameters that you specify in LaunchTemplateData": a parameter sent replaces it whole.
        data = {**template.get_version(source_version).data, **sent}
    version = template.create_version(data, self._get_param("VersionDescription"))
    return ActionResult({"LaunchTemplateVersion": _version_summary(self, template, version)})


# --- AMIs -------------------------------------------------------------------------------------
def _checked_imds_support(value):
    if value not in (None, "", "v2.0"):
        raise InvalidParameterValue(f"Value ({value}) for parameter ImdsSupport is invalid. Valid values: v2.0.")
    return value or None


def register_image(self) -> ActionResult:
    imds_support = _checked_imds_support(self._get_param("ImdsSupport"))
    self.error_on_dryrun()
    image = self.ec2_backend.register_image(self._get_param("Name"), self._get_param("Description", ""))
    image.imds_support = imds_support
    return ActionResult({"ImageId": image.id})


_original_modify_image_attribute = AmisResponse.modify_image_attribute


def modify_image_attribute(self) -> ActionResult:
    value = self._get_param("ImdsSupport.Value") or (self._get_param("ImdsSupport") or {})
    if isinstance(value, dict):
        value = value.get("Value")
    if not value:
        return _original_modify_image_attribute(self)
    if value != "v2.0":
        # Setting v2.0 cannot be undone on that AMI.
        raise InvalidParameterValue(f"Value ({value}) for parameter ImdsSupport is invalid. Valid values: v2.0.")
    image = self.ec2_backend.describe_images(ami_ids=[self._get_param("ImageId")])[0]
    self.error_on_dryrun()
    image.imds_support = "v2.0"
    return EmptyResult()


def install(model) -> None:
    """Patch moto (idempotent); launches read ``model``'s account defaults."""
    global _model
    _model = model
    InstanceBackend.run_instances = _run_instances
    FakeAutoScalingGroup.replace_autoscaling_group_instances = _replace_autoscaling_group_instances
    LaunchTemplates.describe_launch_templates = describe_launch_templates
    LaunchTemplates.describe_launch_template_versions = describe_launch_template_versions
    LaunchTemplates.create_launch_template_version = create_launch_template_version
    AmisResponse.register_image = register_image
    AmisResponse.modify_image_attribute = modify_image_attribute
    Ami.imds_support = None  # the serialiser reads it for DescribeImages' ImdsSupport
    Ami.imds = property(lambda ami: ami.imds_support)  # DescribeImageAttribute imdsSupport
