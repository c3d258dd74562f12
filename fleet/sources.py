"""Sync the launch sources of one account/region and resolve what each one's next launch gets.

Read: every launch template, the default and latest version of all of them in one paginated call
(``Versions=[$Default, $Latest]`` without a template id), then any other version an Auto Scaling
group (or one of its MixedInstancesPolicy overrides) names or a live instance was launched from and
that is not stored yet (versions are immutable); every Auto Scaling group and launch
configuration; the AMIs all of these and the live instances name. Everything is read first and
written in one transaction with bulk upserts, so a sync costs a few statements per table however
many sources there are, and a failed read leaves the previous inventory whole (and says why in
``SourceSyncState``, never "all clear").

Called by ``fleet.sync.sync_region`` after the instances and defaults, within the same rate limits.
"""

import logging
from collections import defaultdict
from types import SimpleNamespace

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
VERDICT_FIELDS = ("next_version", "next_http_tokens", "next_hop_limit", "verdict", "chain", "override_templates")
# Which answer is worse, for a group that launches from several templates (MixedInstancesPolicy
# overrides): one launch that EC2 refuses or that allows IMDSv1 makes the group's verdict.
SEVERITY = {LaunchVerdict.REFUSED: 3, LaunchVerdict.IMDSV1: 2, LaunchVerdict.UNKNOWN: 1, LaunchVerdict.IMDSV2: 0}


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
        for index, override in enumerate(launch_template.get("Overrides") or []):
            # Every override, in priority order; one with its own LaunchTemplateSpecification
            # launches that instance type from that template (its Version defaults to $Default),
            # the others from the group's template.
            override_spec = override.get("LaunchTemplateSpecification") or {}
            overrides.append({
                "index": index, "own_template": bool(override_spec),
                "template_id": override_spec.get("LaunchTemplateId", ""),
                "template_name": override_spec.get("LaunchTemplateName", ""),
                "version": (override_spec.get("Version") or "$Default") if override_spec else "",
                "instance_type": override.get("InstanceType", "") or (
                    "instance requirements" if override.get("InstanceRequirements") else ""),
            })
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
    # Versions are immutable: one read before is not asked for again (a re-sync of 1,000 pinned
    # groups would otherwise spend one call per template, paced by AWS's bucket: docs/benchmarks.md P8).
    have |= set(
        LaunchTemplateVersion.objects.filter(template__account=account, template__region=region)
        .values_list("template__source_id", "version_number")
    )
    wanted = defaultdict(set)
    for group in groups:
        template_id, spec, _mixed, overrides, _lc, name = _group_launch(group)
        template_id = template_id or names_to_ids.get(name, "")
        named = [(o["template_id"] or names_to_ids.get(o["template_name"], ""), o["version"])
                 for o in overrides if o["own_template"]]
        for tid, version in [(template_id, spec), *named]:
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


# Compared with the stored row to decide whether a source is written (last_seen is one UPDATE).
COMPARED_FIELDS = tuple(name for name in SOURCE_FIELDS if name not in ("last_seen", "gone_at"))
OVERRIDE_SYNCED_KEYS = ("index", "own_template", "template_id", "template_name", "version", "instance_type")
IMAGE_FIELDS = ("found", "name", "owner_id", "public", "state", "imds_support")


def _synced_overrides(overrides):
    """The part of ``override_templates`` a sync reads (the resolution is refresh_verdicts')."""
    return [{key: o.get(key) for key in OVERRIDE_SYNCED_KEYS} for o in overrides or []]


def _compared(row, fields):
    """The values of ``fields`` of a row dict, as a sync compares them."""
    return [_synced_overrides(row[name]) if name == "override_templates" else row[name] for name in fields]


def _source_row(kind, source_id, **values):
    """A source as read from AWS: every SOURCE_FIELDS value (unset ones blank / None)."""
    row = {name: "" for name in SOURCE_FIELDS}
    row.update(tags={}, hop_limit=None, default_version=None, latest_version=None, mixed_instances_policy=False,
               override_templates=[], desired_capacity=None, created_at=None, gone_at=None)
    row.update(values, kind=kind, source_id=source_id)
    return row


def _upsert_changed(account, region, now, rows, fields, stored, extra_update=()):
    """Upsert the rows (dicts) that are new or differ from ``stored`` {(kind, source_id): values};
    the others are left alone (their last_seen is refreshed by one UPDATE), so a re-sync of an
    unchanged region builds no model instance and writes no source row."""
    changed = [
        LaunchSource(account=account, region=region, first_seen=now, **{**row, "last_seen": now})
        for row in rows if stored.get((row["kind"], row["source_id"])) != _compared(row, fields)
    ]
    if changed:
        LaunchSource.objects.bulk_create(
            changed, update_conflicts=True, unique_fields=["account", "region", "kind", "source_id"],
            update_fields=[*SOURCE_FIELDS, *extra_update], batch_size=1000,
        )


def _stored_sources(account, region, fields):
    """{(kind, source_id): compared values} of the present sources (a gone one is always rewritten)."""
    return {
        (row["kind"], row["source_id"]): _compared(row, fields)
        for row in LaunchSource.objects.filter(account=account, region=region, gone_at__isnull=True).values(
            "kind", "source_id", *fields)
    }


def _write(account, region, now, templates, versions, groups, configurations, image_ids, images, names_to_ids):
    template_rows = []
    for template in templates:
        tags = _tags(template.get("Tags"))
        owner, detail = owners.managed_owner(tags)
        template_rows.append(_source_row(
            SourceKind.LAUNCH_TEMPLATE, template["LaunchTemplateId"],
            name=template.get("LaunchTemplateName", ""), tags=tags, owner=owner, owner_detail=detail,
            default_version=template.get("DefaultVersionNumber"), latest_version=template.get("LatestVersionNumber"),
            created_at=template.get("CreateTime"),
        ))
    configuration_rows = [
        _source_row(
            SourceKind.LAUNCH_CONFIGURATION, c["LaunchConfigurationName"], name=c["LaunchConfigurationName"],
            image_id=c.get("ImageId", ""), created_at=c.get("CreatedTime"), **stated_options(c.get("MetadataOptions")),
        )
        for c in configurations
    ]
    group_fields = (*COMPARED_FIELDS, "template_id", "launch_configuration_id")
    with transaction.atomic():
        stored = _stored_sources(account, region, group_fields)
        seen = {(row["kind"], row["source_id"]) for row in template_rows + configuration_rows}
        seen |= {(SourceKind.AUTO_SCALING_GROUP, group["AutoScalingGroupName"]) for group in groups}
        vanished = [key for key in stored if key not in seen]
        if vanished:
            gone = Q()
            for kind, source_id in vanished:
                gone |= Q(kind=kind, source_id=source_id)
            LaunchSource.objects.filter(Q(account=account, region=region) & gone).update(gone_at=now)
        LaunchSource.objects.filter(account=account, region=region, gone_at__isnull=True).update(last_seen=now)
        count = len(COMPARED_FIELDS)
        _upsert_changed(account, region, now, template_rows + configuration_rows, COMPARED_FIELDS,
                        {key: values[:count] for key, values in stored.items() if key[0] != SourceKind.AUTO_SCALING_GROUP})
        ids = dict(
            LaunchSource.objects.filter(account=account, region=region)
            .exclude(kind=SourceKind.AUTO_SCALING_GROUP).values_list("source_id", "pk")
        )
        # Versions are immutable in AWS: a version already stored is never rewritten, nor re-sent.
        have = set(
            LaunchTemplateVersion.objects.filter(template__account=account, template__region=region)
            .values_list("template_id", "version_number")
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
            if v["LaunchTemplateId"] in ids and (ids[v["LaunchTemplateId"]], v["VersionNumber"]) not in have
        ]
        if version_rows:
            LaunchTemplateVersion.objects.bulk_create(version_rows, ignore_conflicts=True, batch_size=1000)
        group_rows = []
        for group in groups:
            tags = _tags(group.get("Tags"))
            owner, detail = owners.managed_owner(tags)
            template_id, spec, mixed, overrides, configuration, template_name = _group_launch(group)
            template_id = template_id or names_to_ids.get(template_name, "")
            for override in overrides:
                if override["own_template"]:
                    override["template_id"] = override["template_id"] or names_to_ids.get(override["template_name"], "")
            group_rows.append(_source_row(
                SourceKind.AUTO_SCALING_GROUP, group["AutoScalingGroupName"], name=group["AutoScalingGroupName"],
                tags=tags, owner=owner, owner_detail=detail, template_ref=template_id, version_spec=spec,
                mixed_instances_policy=mixed, override_templates=overrides, launch_configuration_name=configuration,
                desired_capacity=group.get("DesiredCapacity"), created_at=group.get("CreatedTime"),
                template_id=ids.get(template_id) if template_id else None,
                launch_configuration_id=ids.get(configuration) if configuration else None,
            ))
        _upsert_changed(account, region, now, group_rows, group_fields, stored,
                        extra_update=("template", "launch_configuration"))
        _write_images(account, region, now, image_ids, {image["ImageId"]: image for image in images})


# Images written per statement: a region whose instances run 100,000 distinct AMIs is written a
# slice at a time, so the sync's memory does not grow with the number of images (P7).
IMAGES_PER_WRITE = 1000


def _write_images(account, region, now, image_ids, found):
    """Upsert the Image rows of ``image_ids`` that are new or changed (``found``: what AWS
    answered, by id; an id AWS did not answer is stored as not found); the others get synced_at."""
    for start in range(0, len(image_ids), IMAGES_PER_WRITE):
        ids = image_ids[start : start + IMAGES_PER_WRITE]
        image_rows = [
            Image(
                account=account, region=region, image_id=image_id, found=image_id in found, synced_at=now,
                name=(found.get(image_id, {}).get("Name") or "")[:255],
                owner_id=found.get(image_id, {}).get("OwnerId", "") or "",
                public=found[image_id].get("Public") if image_id in found else None,
                state=found.get(image_id, {}).get("State", "") or "",
                imds_support=found.get(image_id, {}).get("ImdsSupport", "") or "",
            )
            for image_id in ids
        ]
        stored_images = {
            row[0]: list(row[1:])
            for row in Image.objects.filter(account=account, region=region, image_id__in=ids)
            .values_list("image_id", *IMAGE_FIELDS)
        }
        image_rows = [row for row in image_rows
                      if stored_images.get(row.image_id) != [getattr(row, name) for name in IMAGE_FIELDS]]
        Image.objects.filter(account=account, region=region, image_id__in=ids).update(synced_at=now)
        if image_rows:
            Image.objects.bulk_create(
                image_rows, update_conflicts=True, unique_fields=["account", "region", "image_id"],
                update_fields=[*IMAGE_FIELDS, "synced_at"],
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


def _ami(images, image_id):
    image = images.get(image_id)
    if image is None or not image.found:
        return Ami(image_id=image_id, known=False)
    return Ami(image_id=image_id, imds_support=image.imds_support or None)


def resolve_override(group, override, templates, versions, images, defaults):
    """(Resolution, version number) of one MixedInstancesPolicy override that names its own
    launch template; ``templates`` is {lt-id: LaunchSource} of the region."""
    what = override.get("instance_type") or f"#{override['index'] + 1}"
    template = templates.get(override["template_id"])
    if template is None:
        named = override["template_id"] or override.get("template_name") or "?"
        return _unknown(f"ASG {group.name} override {what} names launch template {named}, not found"), None
    number = _version_number(override["version"], template)
    prefix = f"ASG {group.name} override {what} ({override['version']}) → "
    version = versions.get((template.pk, number))
    if version is None:
        return _unknown(f"{prefix}LT {template.name} ({template.source_id}) v{number} not read"), number
    level = Stated(
        f"{prefix}LT {template.name} ({template.source_id}) v{number}", version.http_tokens or None, version.hop_limit
    )
    return next_launch([level], defaults, _ami(images, version.image_id)), number


def with_overrides(group, resolution, templates, versions, images, defaults):
    """A mixed group's answer over all the templates it launches from: its own template (unless
    every override names another) and each override's; the worst verdict is the group's, and the
    overrides come back with their own answers (stored in ``override_templates``)."""
    overrides = [dict(o) for o in group.override_templates or []]
    answers = []
    if not overrides or not all(o.get("own_template") for o in overrides):
        answers.append(resolution)
    for override in overrides:
        for name in ("next_version", "next_http_tokens", "next_hop_limit", "verdict", "chain"):
            override.pop(name, None)
        if not override.get("own_template"):
            continue
        answer, number = resolve_override(group, override, templates, versions, images, defaults)
        override.update(next_version=number, next_http_tokens=answer.http_tokens or "",
                        next_hop_limit=answer.hop_limit, verdict=answer.verdict, chain=answer.chain)
        answers.append(answer)
    worst = max(answers, key=lambda answer: SEVERITY[answer.verdict])
    chain = list(resolution.chain) + [
        line for override in overrides if override.get("own_template") for line in override["chain"]
    ]
    if len(answers) > 1:
        chain.append(f"the group launches from {len(answers)} templates: its verdict is the worst of them, "
                     f"{LaunchVerdict(worst.verdict).label}")
    combined = Resolution(http_tokens=worst.http_tokens, hop_limit=worst.hop_limit, verdict=worst.verdict, chain=chain)
    return combined, overrides


def resolve_source(source, versions, images, defaults):
    """The Resolution for one source, given its region's versions {(template pk, n): row},
    images {image_id: Image} and AccountDefaults. Also returns the version number it launches
    (for a mixed group, of its own template; ``with_overrides`` adds the overrides')."""

    def ami(image_id):
        return _ami(images, image_id)

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


class _Row(SimpleNamespace):
    """A stored row as plain attributes: resolving thousands of sources needs no model instance."""

    @property
    def pk(self):
        return self.id


RESOLVED_FIELDS = (
    "id", "kind", "source_id", "name", "http_tokens", "hop_limit", "image_id", "default_version", "latest_version",
    "template_id", "template_ref", "version_spec", "mixed_instances_policy", "override_templates",
    "launch_configuration_id", "launch_configuration_name", *VERDICT_FIELDS,
)


def refresh_verdicts(account, region, template=None):
    """Recompute every present source's next launch in the account/region (after a sync, or
    after the account defaults changed); with ``template``, only that launch template's and the
    groups launching from it (after a change of that template)."""
    present = LaunchSource.objects.filter(account=account, region=region, gone_at__isnull=True)
    if template is None:
        # Only what resolving reads, as plain rows: the region's sources are read once and the
        # groups' template and launch configuration are taken from them, not joined again.
        sources = [_Row(**row) for row in present.values(*RESOLVED_FIELDS)]
        by_pk = {s.pk: s for s in sources}
        for source in sources:
            source.template = by_pk.get(source.template_id)
            source.launch_configuration = by_pk.get(source.launch_configuration_id)
        templates = {s.source_id: s for s in sources if s.kind == SourceKind.LAUNCH_TEMPLATE}
    else:
        # The template, the groups launching it, and the mixed groups (one of whose overrides may name it).
        rows = present.filter(Q(pk=template.pk) | Q(template=template) | Q(mixed_instances_policy=True))
        sources = [s for s in rows.select_related("template", "launch_configuration")
                   if s.pk == template.pk or s.template_id == template.pk
                   or any(o.get("template_id") == template.source_id for o in s.override_templates or [])]
        templates = {t.source_id: t for t in present.filter(kind=SourceKind.LAUNCH_TEMPLATE)}
    version_rows = LaunchTemplateVersion.objects.filter(template__account=account, template__region=region)
    if template is not None:
        needed = {template.pk} | {s.template_id for s in sources if s.template_id} | {
            templates[o["template_id"]].pk for s in sources for o in s.override_templates or []
            if o.get("template_id") in templates}
        version_rows = version_rows.filter(template__in=needed)
    versions = {
        (v["template_id"], v["version_number"]): _Row(**v)
        for v in version_rows.values("template_id", "version_number", "http_tokens", "hop_limit", "image_id")
    }
    # Only the images a source or a version launches: the region's other images (those of its
    # instances, up to one per instance) are not resolved here, and reading them all made the
    # sync's memory grow with the fleet (P7).
    launched = {v.image_id for v in versions.values()} | {source.image_id for source in sources}
    launched.discard("")
    launched.discard(None)
    images = {
        i["image_id"]: _Row(**i)
        for i in Image.objects.filter(account=account, region=region, image_id__in=sorted(launched))
        .values("image_id", "found", "imds_support")
    } if launched else {}
    defaults = account_defaults(account, region)
    changed = []
    for source in sources:
        resolution, number = resolve_source(source, versions, images, defaults)
        overrides = source.override_templates
        if source.kind == SourceKind.AUTO_SCALING_GROUP and source.mixed_instances_policy and overrides:
            resolution, overrides = with_overrides(source, resolution, templates, versions, images, defaults)
        values = (number, resolution.http_tokens or "", resolution.hop_limit, resolution.verdict, resolution.chain,
                  overrides)
        if values != tuple(getattr(source, name) for name in VERDICT_FIELDS):
            for name, value in zip(VERDICT_FIELDS, values, strict=True):
                setattr(source, name, value)
            changed.append(source)
    # Only rows whose answer changed: a re-sync of an unchanged region writes nothing here. Written
    # as an upsert on the natural key that only ever updates (the rows exist; a deleted account's
    # would fail its foreign key): bulk_update's CASE per column took 30 s for a first sync of
    # 3,000 sources (docs/benchmarks.md, P8), this is one statement per 1,000.
    now = timezone.now()
    LaunchSource.objects.bulk_create(
        [
            LaunchSource(account=account, region=region, kind=source.kind, source_id=source.source_id,
                         name=source.name, first_seen=now, last_seen=now,
                         **{name: getattr(source, name) for name in VERDICT_FIELDS})
            for source in changed
        ],
        update_conflicts=True, unique_fields=["account", "region", "kind", "source_id"],
        update_fields=list(VERDICT_FIELDS), batch_size=1000,
    )


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


def groups_using(template):
    """The present Auto Scaling groups launching from ``template``: as their own launch template,
    or through MixedInstancesPolicy overrides (``override_uses``, ``uses_as`` say which)."""
    groups = (
        LaunchSource.objects.filter(account=template.account, region=template.region, gone_at__isnull=True,
                                    kind=SourceKind.AUTO_SCALING_GROUP)
        .filter(Q(template=template) | Q(mixed_instances_policy=True)).order_by("name")
    )
    found = []
    for group in groups:
        group.override_uses = [o for o in group.override_templates or []
                               if o.get("own_template") and o.get("template_id") == template.source_id]
        group.uses_as = [f"override {o.get('instance_type') or '#' + str(o['index'] + 1)}" for o in group.override_uses]
        if group.template_id == template.pk:
            group.uses_as = (["its launch template"] + group.uses_as) if group.uses_as else []
        if group.template_id == template.pk or group.override_uses:
            found.append(group)
    return found


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
