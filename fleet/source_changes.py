"""The "Require IMDSv2 at the source" change kind for launch templates.

A request writes a ChangeBatch (kind ``launch_template``) and one ChangeItem per template, rows
first, like every change; the change engine's runner claims the items within the same per
account/region runner and calls ``LaunchTemplateTarget``, this kind's target (fleet.engine.targets).
For each template the item:

1. reads the version in use (the default version) and creates a new version from it
   (``SourceVersion``) whose only change is ``MetadataOptions.HttpTokens = required`` (and the hop
   limit when asked), described as made by imdsweb batch #N — AWS replaces each parameter sent
   whole, so the whole MetadataOptions of the source version is sent with that one change;
2. makes it the default version (groups launching ``$Default`` and plain launches get it;
   ``$Latest`` groups get it by being the latest);
3. points the Auto Scaling groups pinned to a numeric version at it, only when the user ticked it
   — as their own launch template, or through MixedInstancesPolicy overrides that name this
   template (``aws.update_mixed_group_templates`` rewrites only those versions).

Versions are never deleted. The new version number is written on the item as soon as AWS
created it, so a retry after a throttled step 2 or 3 does not create a second version. Rollback
restores the previous default version and the groups' previous launch template versions.
Templates owned by a managed service (EKS, Elastic Beanstalk, EMR, CloudFormation) are skipped
unless the user overrides; launch configurations cannot be changed (only replaced).
"""

from django.db import IntegrityError, transaction
from django.utils import timezone

from . import aws, sources
from .changes import ChangeRefused
from .changes.requests import _author, _dispatch_on_commit
from .choices import ChangeKind, ItemState, SourceKind
from .engine.targets.base import Target
from .models import ChangeBatch, ChangeItem, LaunchSource, LaunchTemplateVersion
from .source_kinds import kind_of

REQUIRED = "required"


def _pinned(spec):
    return spec.isdigit()


def plan(selected, hop_limit=None, update_pinned=False, override_owner=False):
    """[(source, reason or '', groups it will update)] for the selected sources: reason says why a
    source is skipped; an empty reason means it will be changed."""
    selected = list(selected)
    versions = {
        (v.template_id, v.version_number): v
        for v in LaunchTemplateVersion.objects.filter(template__in=selected)  # only templates have versions
    }
    rows = []
    for source in selected:
        pinned = _pinned_groups(source) if update_pinned and kind_of(source).has_versions else []  # templates only
        version = versions.get((source.pk, source.default_version))
        if kind_of(source).not_changed_in_place:
            reason = kind_of(source).not_changed_in_place
        elif source.gone_at:
            reason = "the launch template is gone from AWS"
        elif source.owner and not override_owner:
            reason = f"{source.read_only_reason} Tick the override to change it anyway."
        elif version is None:
            reason = f"the default version v{source.default_version} has not been read yet: sync first"
        elif version.http_tokens == REQUIRED and (hop_limit is None or version.hop_limit == hop_limit) and not pinned:
            reason = "its default version already requires IMDSv2"
        else:
            reason = ""
        rows.append((source, reason, pinned))
    return rows


def _pinned_groups(template):
    """The present groups that launch a numbered version of ``template``, each with ``pinned_main``
    (its own launch template is pinned) and ``pinned_overrides`` {override index: version}."""
    found = []
    for group in sources.groups_using(template):
        group.pinned_main = group.template_id == template.pk and _pinned(group.version_spec)
        group.pinned_overrides = {str(o["index"]): o["version"] for o in group.override_uses if _pinned(o["version"])}
        parts = ([f"v{group.version_spec}"] if group.pinned_main else []) + [
            f"override #{int(index) + 1} v{version}" for index, version in group.pinned_overrides.items()]
        group.pinned_as = ", ".join(parts)
        if parts:
            found.append(group)
    return found


def _group_previous(groups):
    """(plain groups {name: version}, mixed groups {name: {"main": version or None, "overrides": {i: v}}})."""
    plain = {g.source_id: g.version_spec for g in groups if g.pinned_main and not g.mixed_instances_policy}
    mixed = {
        g.source_id: {"main": g.version_spec if g.pinned_main else None, "overrides": g.pinned_overrides}
        for g in groups if g.mixed_instances_policy
    }
    return plain, mixed


def request_source_fix(user, selected, *, hop_limit=None, update_pinned=False, override_owner=False, comment="",
                       dry_run=False):
    """Queue "Require IMDSv2 at the source" for the selected launch templates. Returns the batch."""
    if hop_limit is not None and not 1 <= hop_limit <= 64:
        raise ChangeRefused("The hop limit is 1–64.")
    rows = plan(selected, hop_limit, update_pinned, override_owner)
    if not rows:
        raise ChangeRefused("No launch template selected.")
    desired = {"http_tokens": REQUIRED} | ({"hop_limit": hop_limit} if hop_limit is not None else {})
    if update_pinned:
        desired["update_pinned"] = True
    try:
        with transaction.atomic():
            batch = ChangeBatch.objects.create(
                created_by=_author(user), kind=ChangeKind.LAUNCH_TEMPLATE, desired=desired, comment=comment,
                selection=", ".join(source.name for source, _reason, _groups in rows)[:2000], dry_run=dry_run,
                override_usage=override_owner,
            )
            ChangeItem.objects.bulk_create(
                ChangeItem(
                    batch=batch, account=source.account, region=source.region, source=source,
                    state=ItemState.SKIPPED if reason else ItemState.QUEUED, reason=reason,
                    previous={} if reason else {
                        "default_version": source.default_version,
                        **dict(zip(("groups", "mixed"), _group_previous(groups), strict=True)),
                    },
                    finished_at=timezone.now() if reason else None,
                )
                for source, reason, groups in rows
            )
            _dispatch_on_commit(batch)
    except IntegrityError as exc:
        raise ChangeRefused("A change of one of these launch templates is already in progress.") from exc
    return batch


def rerun(batch, user, comment):
    """A dry run's change, for real, on the same launch templates."""
    return request_source_fix(
        user, LaunchSource.objects.filter(pk__in=batch.items.values("source")).select_related("account"),
        hop_limit=batch.desired.get("hop_limit"), update_pinned=batch.desired.get("update_pinned", False),
        override_owner=batch.override_usage, comment=comment,
    )


def rollback(batch, user, comment=""):
    """A batch that restores each applied item's previous default version and group versions."""
    def undo(item, new):
        groups = item.previous.get("groups", {})
        mixed = item.previous.get("mixed", {})
        return ChangeItem(
            batch=new, account=item.account, region=item.region, source=item.source,
            desired={"default_version": item.previous.get("default_version"), "groups": groups, "mixed": mixed},
            previous={"default_version": item.desired.get("new_version"),
                      "groups": {name: str(item.desired.get("new_version")) for name in groups},
                      "mixed": _repointed(mixed, item.desired.get("new_version"))},
        )

    return LaunchTemplateTarget().undo_applied(
        batch, user, comment, undo, "Another change of one of these launch templates is in progress.",
        related=("account", "source"),
    )


def _repointed(mixed, version):
    """The mixed groups' pinned parts, all pointed at ``version``."""
    return {
        name: {"main": None if parts["main"] is None else str(version),
               "overrides": {index: str(version) for index in parts["overrides"]}}
        for name, parts in mixed.items()
    }


def _update_mixed(account, region, template_id, mixed):
    for name, parts in mixed.items():
        aws.update_mixed_group_templates(account, region, name, template_id, parts["main"], parts["overrides"])


def _record_groups(source, groups, mixed):
    """The cache follows what the groups now launch (their own version spec, their overrides')."""
    for name, spec in groups.items():
        LaunchSource.objects.filter(
            account=source.account, region=source.region, kind=SourceKind.AUTO_SCALING_GROUP, source_id=name
        ).update(version_spec=spec)
    for name, parts in mixed.items():
        group = LaunchSource.objects.filter(
            account=source.account, region=source.region, kind=SourceKind.AUTO_SCALING_GROUP, source_id=name
        ).first()
        if group is None:
            continue
        if parts["main"] is not None:
            group.version_spec = parts["main"]
        overrides = [dict(o) for o in group.override_templates or []]
        for override in overrides:
            if str(override.get("index")) in parts["overrides"]:
                override["version"] = parts["overrides"][str(override["index"])]
        group.override_templates = overrides
        group.save(update_fields=["version_spec", "override_templates"])


class LaunchTemplateTarget(Target):
    """What the runner calls for a ``launch_template`` item: paced by CreateLaunchTemplateVersion
    (its first call), or by ModifyLaunchTemplate for a rollback, which only repoints the default."""

    kind = ChangeKind.LAUNCH_TEMPLATE
    action = "CreateLaunchTemplateVersion"

    def action_for(self, item):
        return "ModifyLaunchTemplate" if item.batch.rollback_of_id else self.action

    def rollback(self, batch, user, comment="", request_token=None):
        return rollback(batch, user, comment)

    def rerun(self, batch, user, comment):
        return rerun(batch, user, comment)

    def call(self, item, dry_run):
        token_taken = True  # the runner took this item's token
        source, account, region = item.source, item.account, item.region
        if item.batch.rollback_of_id:
            return self._restore(item, dry_run, token_taken)
        source_version = item.previous["default_version"]
        if dry_run:
            aws.create_launch_template_version(
                account, region, source.source_id, source_version, {"HttpTokens": REQUIRED},
                f"dry run of imdsweb batch #{item.batch_id}", dry_run=True, token_taken=token_taken,
            )
            return {"request_id": ""}  # an endpoint that ignores DryRun
        request_id = ""
        new_version = item.desired.get("new_version")
        if new_version is None:
            found = [
                v for page in aws.describe_launch_template_version_pages(account, region, source.source_id, [str(source_version)])
                for v in page
            ]
            if not found:
                raise aws.PermanentAwsError(
                    "InvalidLaunchTemplateVersion.NotFound", f"version {source_version} of {source.source_id} is gone"
                )
            options = dict(found[0].get("LaunchTemplateData", {}).get("MetadataOptions", {}))
            options.pop("State", None)
            options["HttpTokens"] = REQUIRED
            if "hop_limit" in item.batch.desired:
                options["HttpPutResponseHopLimit"] = item.batch.desired["hop_limit"]
            created = aws.create_launch_template_version(
                account, region, source.source_id, source_version, options,
                f"made by imdsweb batch #{item.batch_id}: require IMDSv2 (from v{source_version})",
                token_taken=token_taken,
            )
            new_version = created["VersionNumber"]
            # Recorded at once: a retry of the next steps must not create a second version.
            item.desired = {"new_version": new_version}
            ChangeItem.objects.filter(pk=item.pk).update(desired=item.desired)
            self._record_version(source, created, source_version)
        request_id = aws.modify_launch_template(account, region, source.source_id, new_version)
        for group in item.previous.get("groups", {}):
            aws.update_auto_scaling_group(account, region, group, source.source_id, new_version)
        _update_mixed(account, region, source.source_id, _repointed(item.previous.get("mixed", {}), new_version))
        return {"request_id": request_id}

    def _restore(self, item, dry_run, token_taken):
        source, account, region = item.source, item.account, item.region
        default = item.desired["default_version"]
        request_id = aws.modify_launch_template(
            account, region, source.source_id, default, dry_run=dry_run, token_taken=token_taken
        )
        for group, spec in item.desired.get("groups", {}).items():
            aws.update_auto_scaling_group(account, region, group, source.source_id, spec)
        _update_mixed(account, region, source.source_id, item.desired.get("mixed", {}))
        return {"request_id": request_id}

    @staticmethod
    def _record_version(source, created, source_version):
        base = LaunchTemplateVersion.objects.filter(template=source, version_number=source_version).first()
        options = sources.stated_options(created.get("LaunchTemplateData", {}).get("MetadataOptions"))
        LaunchTemplateVersion.objects.update_or_create(
            template=source, version_number=created["VersionNumber"],
            defaults={
                "description": (created.get("VersionDescription") or "")[:255],
                "image_id": created.get("LaunchTemplateData", {}).get("ImageId") or (base.image_id if base else ""),
                "created_by": created.get("CreatedBy") or "", "created_at": created.get("CreateTime"),
                "synced_at": timezone.now(), **options,
            },
        )

    def record(self, item, result):
        """After AWS took every step: the cache says what AWS now has, verdicts follow."""
        source = item.source
        if item.batch.rollback_of_id:
            default = item.desired["default_version"]
            groups = item.desired.get("groups", {})
            mixed = item.desired.get("mixed", {})
        else:
            default = item.desired["new_version"]
            groups = {name: str(default) for name in item.previous.get("groups", {})}
            mixed = _repointed(item.previous.get("mixed", {}), default)
            source.latest_version = max(source.latest_version or 0, default)
        source.default_version = default
        source.save(update_fields=["default_version", "latest_version"])
        _record_groups(source, groups, mixed)
        sources.refresh_verdicts(source.account, source.region, template=source)
        super().record(item, result)

