"""What differs between the three kinds of launch source (``SourceKind``), in one place: which
instances a source launched, how it launches (in words), its launch template and groups, and
whether imdsweb may change it in place.

The pages, the tables, the model and the "require IMDSv2 at the source" planner ask the source's
kind (``kind_of``) instead of branching on ``LaunchSource.kind``. What the next launch from each
kind gets is resolved in ``fleet.sources.resolve_source``, the sync's own per-kind code.
"""

from django.db.models import Q

from .choices import LaunchVerdict, SourceKind
from .models import Instance, LaunchSource


class _SourceKind:
    kind = None
    has_versions = False  # launch template versions to show
    # Why imdsweb changes a source of this kind only through something else ("" when it may).
    not_changed_in_place = ""

    def condition(self, source):
        """Which instances of the source's account/region it launched (AWS's attribution tags)."""
        raise NotImplementedError

    def instances(self, source):
        """The present instances this source launched, and the instance list's filter that shows
        them (None when the list cannot filter that way)."""
        raise NotImplementedError

    def spec(self, source):
        """What the source launches from, in words (one line)."""
        raise NotImplementedError

    def template(self, source):
        """The launch template whose versions the source launches, or None."""
        return None

    def groups(self, source):
        """The present Auto Scaling groups that launch from this source, or None."""
        return None

    def overrides(self, source):
        """The MixedInstancesPolicy overrides the source launches from, each with its template row."""
        return []

    def fixed_through(self, source):
        """The launch templates "require IMDSv2 at the source" changes when this source is chosen,
        as a filter over LaunchSource (None: the source stands for itself)."""
        return None

    def read_only_reason(self, source):
        """Why imdsweb will not change this source in place (None when it may)."""
        if source.owner:
            return f"Owned by {source.get_owner_display()} ({source.owner_detail}): change it through its owner."
        return None

    @staticmethod
    def _present(source):
        return Instance.objects.present().filter(account=source.account, region=source.region)

    @staticmethod
    def _query(source, **narrow):
        return {"account": source.account.account_id, "region": source.region} | narrow


class LaunchTemplateKind(_SourceKind):
    kind = SourceKind.LAUNCH_TEMPLATE
    has_versions = True

    def condition(self, source):
        return Q(launch_template_id=source.source_id)

    def instances(self, source):
        return (self._present(source).filter(self.condition(source)),
                self._query(source, launch_template=source.source_id))

    def spec(self, source):
        return f"default v{source.default_version} · latest v{source.latest_version}"

    def template(self, source):
        return source

    def groups(self, source):
        from .sources import groups_using  # the sync's own query (a group's own template or its overrides)

        return groups_using(source)


class AutoScalingGroupKind(_SourceKind):
    kind = SourceKind.AUTO_SCALING_GROUP
    not_changed_in_place = "an Auto Scaling group is fixed through its launch template"

    def condition(self, source):
        return Q(autoscaling_group=source.source_id)

    def instances(self, source):
        return (self._present(source).filter(self.condition(source)),
                self._query(source, autoscaling_group=source.source_id))

    def spec(self, source):
        if source.launch_configuration_name and not source.template_ref:
            return f"launch configuration {source.launch_configuration_name}"
        resolved = f" → v{source.next_version}" if source.next_version else ""
        own = sum(1 for o in source.override_templates or [] if o.get("own_template"))
        mixed = (f" (mixed instances policy, {own} override template(s))" if own else " (mixed instances policy)") if (
            source.mixed_instances_policy) else ""
        return f"{source.template_ref} {source.version_spec or '$Default'}{resolved}{mixed}"

    def template(self, source):
        return source.template

    def fixed_through(self, group):
        """A group is fixed through its templates: its own and those its MixedInstancesPolicy
        overrides name."""
        wanted = Q(pk__in=[group.template_id] if group.template_id else [])
        ids = [o["template_id"] for o in group.override_templates or [] if o.get("own_template") and o.get("template_id")]
        if ids:
            wanted |= Q(account_id=group.account_id, region=group.region, kind=SourceKind.LAUNCH_TEMPLATE,
                        source_id__in=ids)
        return wanted

    def overrides(self, group):
        overrides = [dict(o) for o in group.override_templates or []]
        ids = {o["template_id"] for o in overrides if o.get("template_id")}
        rows = {t.source_id: t for t in LaunchSource.objects.filter(
            account=group.account, region=group.region, kind=SourceKind.LAUNCH_TEMPLATE, source_id__in=ids)}
        for override in overrides:
            override["row"] = rows.get(override.get("template_id"))
            verdict = override.get("verdict")
            override["verdict_label"] = LaunchVerdict(verdict).label if verdict else "not resolved yet"
        return overrides


class LaunchConfigurationKind(_SourceKind):
    kind = SourceKind.LAUNCH_CONFIGURATION
    not_changed_in_place = (
        "A launch configuration cannot be modified, only replaced: create a launch template "
        "that requires IMDSv2 and move the Auto Scaling groups onto it (AWS recommends "
        "migrating from launch configurations to launch templates)."
    )

    def condition(self, source):
        return Q(autoscaling_group__in=list(source.groups_on_configuration.values_list("source_id", flat=True)))

    def instances(self, source):
        return self._present(source).filter(self.condition(source)), None

    def spec(self, source):
        return f"AMI {source.image_id or '?'}"

    def groups(self, source):
        return source.groups_on_configuration.filter(gone_at__isnull=True).order_by("name")

    def read_only_reason(self, source):
        return self.not_changed_in_place


KINDS = {kind.kind: kind() for kind in (LaunchTemplateKind, AutoScalingGroupKind, LaunchConfigurationKind)}


def kind_of(source):
    return KINDS[source.kind]


def fix_targets(selected):
    """The sources "require IMDSv2 at the source" plans for ``selected``: each source itself, or
    what its kind is fixed through (a group: its launch templates), each once, in a stable order."""
    chosen, wanted = {}, Q(pk__in=[])
    for source in selected:
        through = kind_of(source).fixed_through(source)
        if through is None:
            chosen[source.pk] = source
        else:
            wanted |= through
    for template in LaunchSource.objects.filter(wanted).select_related("account"):
        chosen.setdefault(template.pk, template)
    return sorted(chosen.values(), key=lambda s: (s.account.name, s.region, s.name))
