"""Sync the launch sources of one account/region and resolve what each one's next launch gets.

Read: every launch template, the default and latest version of all of them in one paginated call
(``Versions=[$Default, $Latest]`` without a template id), then any other version an Auto Scaling
group names or a live instance was launched from; every Auto Scaling group and launch
configuration; the AMIs all of these and the live instances name. Everything is read first and
written in one transaction with bulk upserts, so a sync costs a few statements per table however
many sources there are, and a failed read leaves the previous inventory whole (and says why in
``SourceSyncState``, never "all clear").

Called by ``fleet.sync.sync_region`` after the instances and defaults, within the same rate limits.
"""

import logging
from collections import defaultdict

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from . import aws, owners
from .choices import DefaultsStatus, LaunchVerdict, ManagedBy, SourceKind
from .models import Image, Instance, LaunchSource, LaunchTemplateVersion, MetadataDefaults, SourceSyncState
from .resolver import AccountDefaults, Ami, Resolution, Stated, next_launch

log = logging.getLogger(__name__)

VERSIONS_PER_CALL = 100
OPTION_FIELDS = ("http_tokens", "hop_limit", "http_endpoint", "http_protocol_ipv6", "instance_metadata_tags")
SOURCE_FIELDS = (
    "name", "tags", "owner", "owner_detail", "default_version", "latest_version", "template_ref", "version_spec",
    "mixed_instances_policy", "override_templates", "launch_configuration_name", "desired_capacity", "image_id",
    *OPTION_FIELDS, "created_at", "last_seen", "gone_at",
)
VERDICT_FIELDS = ("next_version", "next_http_tokens", "next_hop_limit", "verdict", "chain")


def stated_options(metadata_options):
    """A MetadataOptions dict (template version or launch configuration) -> our fields; unset is
    blank / None."""
    options = metadata_options or {}
    hop = options.get("HttpPutResponseHopLimit")
    return {
        "http_tokens": options.get("HttpTokens") or "",
        "hop_limit": int(hop) if hop not in (None, "") else None,
        "http_endpoint": options.get("HttpEndpoint") or "",
        "http_protocol_ipv6": options.get("HttpProtocolIpv6") or "",
        "instance_metadata_tags": options.get("InstanceMetadataTags") or "",
    }


def _tags(items, key="Key", value="Value"):
    return {tag[key]: tag.get(value, "") for tag in items or []}


def _version_number(spec, template):
    """An ASG's Version ($Default / $Latest / a number) as a number, given the template row."""
    if template is None:
        return None
    if spec in ("", "$Default"):
        return template.default_version
    if spec == "$Latest":
        return template.latest_version
    try:
        return int(spec)
    except ValueError:
        return None


def _group_launch(group):
    """(template id, version spec, mixed?, overrides, launch configuration name) of a group dict."""
    spec = group.get("LaunchTemplate")
    mixed = False
    overrides = []
    if not spec and group.get("MixedInstancesPolicy"):
        mixed = True
        launch_template = group["MixedInstancesPolicy"].get("LaunchTemplate", {})
        spec = launch_template.get("LaunchTemplateSpecification")
        for override in launch_template.get("Overrides", []):
            override_spec = override.get("LaunchTemplateSpecification")
            if override_spec:
                overrides.append(
                    {"template_id": override_spec.get("LaunchTemplateId", ""), "version": override_spec.get("Version", "")}
                )
    spec = spec or {}
    return (
        spec.get("LaunchTemplateId", ""),
        spec.get("Version") or "$Default" if spec else "",
        mixed,
        overrides,
        group.get("LaunchConfigurationName", "") or "",
        spec.get("LaunchTemplateName", ""),
    )


def _read(account, region):
    """Everything the sources sync needs from AWS (raises AwsError)."""
    templates = [t for page in aws.describe_launch_template_pages(account, region) for t in page]
    versions = [v for page in aws.describe_launch_template_version_pages(account, region) for v in page]
    groups = [g for page in aws.describe_auto_scaling_group_pages(account, region) for g in page]
    configurations = [c for page in aws.describe_launch_configuration_pages(account, region) for c in page]

    names_to_ids = {t["LaunchTemplateName"]: t["LaunchTemplateId"] for t in templates}
    known = {t["LaunchTemplateId"] for t in templates}
    have = {(v["LaunchTemplateId"], v["VersionNumber"]) for v in versions}
    wanted = defaultdict(set)
    for group in groups:
        template_id, spec, _mixed, overrides, _lc, name = _group_launch(group)
        template_id = template_id or names_to_ids.get(name, "")
        for tid, version in [(template_id, spec)] + [(o["template_id"], o["version"]) for o in overrides]:
            if tid in known and str(version).isdigit():
                wanted[tid].add(int(version))
    for tid, version in (
        Instance.objects.present().filter(account=account, region=region).exclude(launch_template_id="")
        .values_list("launch_template_id", "launch_template_version").distinct()
    ):
        if tid in known and version.isdigit():
            wanted[tid].add(int(version))
    for tid, numbers in wanted.items():
        numbers = sorted(n for n in numbers if (tid, n) not in have)
        for start in range(0, len(numbers), VERSIONS_PER_CALL):
            chunk = [str(n) for n in numbers[start : start + VERSIONS_PER_CALL]]
            try:
                versions.extend(
                    v for page in aws.describe_launch_template_version_pages(account, region, tid, chunk) for v in page
                )
            except aws.PermanentAwsError as exc:  # a version deleted since the group named it
                log.info("versions %s of %s in %s/%s unreadable: %s", chunk, tid, account.account_id, region, exc)

    image_ids = {v.get("LaunchTemplateData", {}).get("ImageId") for v in versions}
    image_ids |= {c.get("ImageId") for c in configurations}
    image_ids |= set(
        Instance.objects.present().filter(account=account, region=region).exclude(image_id="")
        .values_list("image_id", flat=True).distinct()
    )
    image_ids = sorted(i for i in image_ids if i and not i.startswith("resolve:"))
    images = list(aws.describe_images(account, region, image_ids))
    return templates, versions, groups, configurations, image_ids, images, names_to_ids


def _upsert_sources(rows):
    if rows:
        LaunchSource.objects.bulk_create(
            rows, update_conflicts=True, unique_fields=["account", "region", "kind", "source_id"],
            update_fields=list(SOURCE_FIELDS),
        )


def _write(account, region, now, templates, versions, groups, configurations, image_ids, images, names_to_ids):
    base = {"account": account, "region": region, "first_seen": now, "last_seen": now, "gone_at": None}
    template_rows = []
    for template in templates:
        tags = _tags(template.get("Tags"))
        owner, detail = owners.managed_owner(tags)
        template_rows.append(LaunchSource(
            kind=SourceKind.LAUNCH_TEMPLATE, source_id=template["LaunchTemplateId"],
            name=template.get("LaunchTemplateName", ""), tags=tags, owner=owner, owner_detail=detail,
            default_version=template.get("DefaultVersionNumber"), latest_version=template.get("LatestVersionNumber"),
            created_at=template.get("CreateTime"), **base,
        ))
    configuration_rows = [
        LaunchSource(
            kind=SourceKind.LAUNCH_CONFIGURATION, source_id=c["LaunchConfigurationName"], name=c["LaunchConfigurationName"],
            image_id=c.get("ImageId", ""), created_at=c.get("CreatedTime"), **stated_options(c.get("MetadataOptions")),
            **base,
        )
        for c in configurations
    ]
    with transaction.atomic():
        _upsert_sources(template_rows + configuration_rows)
        ids = dict(
            LaunchSource.objects.filter(account=account, region=region)
            .exclude(kind=SourceKind.AUTO_SCALING_GROUP).values_list("source_id", "pk")
        )
        version_rows = [
            LaunchTemplateVersion(
                template_id=ids[v["LaunchTemplateId"]], version_number=v["VersionNumber"],
                description=(v.get("VersionDescription") or "")[:255],
                image_id=v.get("LaunchTemplateData", {}).get("ImageId", "") or "",
                created_by=v.get("CreatedBy", "") or "", created_at=v.get("CreateTime"), synced_at=now,
                **stated_options(v.get("LaunchTemplateData", {}).get("MetadataOptions")),
            )
            for v in versions
            if v["LaunchTemplateId"] in ids
        ]
        if version_rows:
            # Versions are immutable in AWS: a version already stored is never rewritten.
            LaunchTemplateVersion.objects.bulk_create(version_rows, ignore_conflicts=True, batch_size=1000)
        group_rows = []
        for group in groups:
            tags = _tags(group.get("Tags"))
            owner, detail = owners.managed_owner(tags)
            template_id, spec, mixed, overrides, configuration, template_name = _group_launch(group)
            template_id = template_id or names_to_ids.get(template_name, "")
            group_rows.append(
                _group_row(group, tags, owner, detail, template_id, spec, mixed, overrides, configuration, base)
            )
        for row in group_rows:
            row.template_id = ids.get(row.template_ref) if row.template_ref else None
            row.launch_configuration_id = ids.get(row.launch_configuration_name) if row.launch_configuration_name else None
        if group_rows:
            LaunchSource.objects.bulk_create(
                group_rows, update_conflicts=True, unique_fields=["account", "region", "kind", "source_id"],
                update_fields=[*SOURCE_FIELDS, "template", "launch_configuration"],
            )
        found = {image["ImageId"]: image for image in images}
        image_rows = [
            Image(
                account=account, region=region, image_id=image_id, found=image_id in found, synced_at=now,
                name=(found.get(image_id, {}).get("Name") or "")[:255],
                owner_id=found.get(image_id, {}).get("OwnerId", "") or "",
                public=found[image_id].get("Public") if image_id in found else None,
                state=found.get(image_id, {}).get("State", "") or "",
                imds_support=found.get(image_id, {}).get("ImdsSupport", "") or "",
            )
            for image_id in image_ids
        ]
        if image_rows:
            Image.objects.bulk_create(
                image_rows, update_conflicts=True, unique_fields=["account", "region", "image_id"],
                update_fields=["found", "name", "owner_id", "public", "state", "imds_support", "synced_at"],
            )
        LaunchSource.objects.filter(account=account, region=region, gone_at__isnull=True, last_seen__lt=now).update(
            gone_at=now
        )


def _group_row(group, tags, owner, detail, template_id, spec, mixed, overrides, configuration, base):
    return LaunchSource(
        kind=SourceKind.AUTO_SCALING_GROUP, source_id=group["AutoScalingGroupName"], name=group["AutoScalingGroupName"],
        tags=tags, owner=owner, owner_detail=detail, template_ref=template_id, version_spec=spec,
        mixed_instances_policy=mixed, override_templates=overrides, launch_configuration_name=configuration,
        desired_capacity=group.get("DesiredCapacity"), created_at=group.get("CreatedTime"), **base,
    )


def account_defaults(account, region):
    """The account/region defaults as the resolver takes them (not known until a sync read them)."""
    row = MetadataDefaults.objects.filter(account=account, region=region).first()
    if row is None or row.status != DefaultsStatus.KNOWN:
        return AccountDefaults(region=region, known=False)
    return AccountDefaults(
        region=region, http_tokens=row.http_tokens or None, hop_limit=row.hop_limit,
        enforced=row.http_tokens_enforced == "enabled", policy_managed=row.managed_by == ManagedBy.DECLARATIVE_POLICY,
    )


def resolve_source(source, versions, images, defaults):
    """The Resolution for one source, given its region's versions {(template pk, n): row},
    images {image_id: Image} and AccountDefaults. Also returns the version number it launches."""

    def ami(image_id):
        image = images.get(image_id)
        if image is None or not image.found:
            return Ami(image_id=image_id, known=False)
        return Ami(image_id=image_id, imds_support=image.imds_support or None)

    if source.kind == SourceKind.LAUNCH_CONFIGURATION:
        level = Stated(f"launch configuration {source.name}", source.http_tokens or None, source.hop_limit)
        return next_launch([level], defaults, ami(source.image_id)), None
    if source.kind == SourceKind.LAUNCH_TEMPLATE:
        template, number, prefix = source, source.default_version, ""
    else:
        template = source.template if source.template_id else None
        if source.launch_configuration_name and not source.template_ref:
            configuration = source.launch_configuration
            if configuration is None:
                return _unknown(f"ASG {source.name} names launch configuration {source.launch_configuration_name}, not found"), None
            level = Stated(
                f"ASG {source.name} → launch configuration {configuration.name}",
                configuration.http_tokens or None, configuration.hop_limit,
            )
            return next_launch([level], defaults, ami(configuration.image_id)), None
        if template is None:
            return _unknown(f"ASG {source.name} names launch template {source.template_ref or '?'}, not found"), None
        number = _version_number(source.version_spec, template)
        prefix = f"ASG {source.name} ({source.version_spec or '$Default'}) → "
    version = versions.get((template.pk, number))
    if version is None:
        return _unknown(f"{prefix}LT {template.name} ({template.source_id}) v{number} not read"), number
    level = Stated(
        f"{prefix}LT {template.name} ({template.source_id}) v{number}", version.http_tokens or None, version.hop_limit
    )
    return next_launch([level], defaults, ami(version.image_id)), number


def _unknown(reason):
    return Resolution(http_tokens=None, hop_limit=None, verdict=LaunchVerdict.UNKNOWN, chain=[f"{reason}: cannot tell"])


def refresh_verdicts(account, region, template=None):
    """Recompute every present source's next launch in the account/region (after a sync, or
    after the account defaults changed); with ``template``, only that launch template's and the
    groups launching from it (after a change of that template)."""
    rows = LaunchSource.objects.filter(account=account, region=region, gone_at__isnull=True)
    if template is not None:
        rows = rows.filter(Q(pk=template.pk) | Q(template=template))
    sources = list(rows.select_related("template", "launch_configuration"))
    version_rows = LaunchTemplateVersion.objects.filter(template__account=account, template__region=region)
    if template is not None:
        version_rows = version_rows.filter(template=template)
    versions = {(v.template_id, v.version_number): v for v in version_rows}
    images = {i.image_id: i for i in Image.objects.filter(account=account, region=region)}
    defaults = account_defaults(account, region)
    changed = []
    for source in sources:
        resolution, number = resolve_source(source, versions, images, defaults)
        values = (number, resolution.http_tokens or "", resolution.hop_limit, resolution.verdict, resolution.chain)
        if values != tuple(getattr(source, name) for name in VERDICT_FIELDS):
            for name, value in zip(VERDICT_FIELDS, values, strict=True):
                setattr(source, name, value)
            changed.append(source)
    # Only rows whose answer changed: a re-sync of an unchanged region writes nothing here.
    LaunchSource.objects.bulk_update(changed, VERDICT_FIELDS, batch_size=500)


def sync_sources(account, region):
    """Read and store the account/region's launch sources; returns the SourceSyncState.

    An AWS error (AccessDenied for autoscaling:Describe*, throttling beyond retries) is recorded
    on the state and keeps the previous inventory."""
    state, _ = SourceSyncState.objects.get_or_create(account=account, region=region)
    now = timezone.now()
    try:
        read = _read(account, region)
    except aws.AwsError as exc:
        log.warning("sources of %s/%s unknown: %s", account.account_id, region, exc)
        state.error = f"{exc.code}: {exc.message}"[:2000]
        state.save(update_fields=["error"])
        return state
    _write(account, region, now, *read)
    refresh_verdicts(account, region)
    state.synced_at, state.error = now, ""
    state.save(update_fields=["synced_at", "error"])
    return state


def enforcement_blockers(pairs=None):
    """{(account pk, region): [sources]} of present sources whose next launch does not resolve
    to HttpTokens required (IMDSv1 allowed, or unknown): enabling HttpTokensEnforced there would
    make EC2 refuse their launches. Sources already refused (enforcement on) are listed too.
    One query; ``pairs`` narrows it to those (account pk, region) pairs."""
    blockers = defaultdict(list)
    rows = LaunchSource.objects.filter(gone_at__isnull=True).exclude(verdict=LaunchVerdict.IMDSV2).order_by("name")
    if pairs is not None:
        accounts = {account_pk for account_pk, _ in pairs}
        rows = rows.filter(account_id__in=accounts)
    for source in rows:
        if pairs is None or (source.account_id, source.region) in pairs:
            blockers[(source.account_id, source.region)].append(source)
    return blockers
