"""CSV export of instances, streamed, with spreadsheet formula injection neutralised.

A member AWS left out of MetadataOptions (NULL) is an empty cell, like every other absent value.
The two rule columns give each instance's result under Prowler's ``ec2_instance_imdsv2_enabled``
and AWS Config's ``ec2-imdsv2-check``, empty for the instances neither evaluates (gone,
terminated, shutting down), so that the export adds up to the overview's figures.
"""

import csv

from django.conf import settings
from django.http import StreamingHttpResponse

# A cell starting with one of these is a formula (or a DDE command) to Excel / LibreOffice / Sheets
# (OWASP's list, plus the full-width forms spreadsheets fold to ASCII, and | and ; which some
# importers treat as commands or separators).
FORMULA_CHARACTERS = ("=", "+", "-", "@", "|", ";", "\uff1d", "\uff0b", "\uff0d", "\uff20")
FORMULA_PREFIXES = (*FORMULA_CHARACTERS, "\t", "\r", "\n")

COLUMNS = (
    ("account_id", lambda i: i.account.account_id),
    ("account_name", lambda i: i.account.name),
    ("ou_path", lambda i: i.account.ou_path),
    ("region", lambda i: i.region),
    ("instance_id", lambda i: i.instance_id),
    ("name", lambda i: i.name),
    ("instance_state", lambda i: i.instance_state),
    ("instance_type", lambda i: i.instance_type),
    ("http_tokens", lambda i: i.http_tokens),
    ("hop_limit", lambda i: i.hop_limit),
    ("http_endpoint", lambda i: i.http_endpoint),
    ("http_protocol_ipv6", lambda i: i.http_protocol_ipv6),
    ("instance_metadata_tags", lambda i: i.instance_metadata_tags),
    ("metadata_state", lambda i: i.metadata_state),
    ("imdsv2_enforced", lambda i: "yes" if i.enforced else "no"),
    ("v1_calls", lambda i: i.v1_calls),
    ("iam_instance_profile_arn", lambda i: i.iam_instance_profile_arn),
    ("public_ip", lambda i: i.public_ip),
    ("private_ip", lambda i: i.private_ip),
    ("vpc_id", lambda i: i.vpc_id),
    ("subnet_id", lambda i: i.subnet_id),
    ("platform_details", lambda i: i.platform_details),
    ("launch_time", lambda i: i.launch_time.isoformat() if i.launch_time else ""),
    # The owner tag chosen in settings (IMDSWEB_OWNER_TAG); empty without the tag.
    ("team", lambda i: (i.tags or {}).get(settings.IMDSWEB_OWNER_TAG)),
    ("launch_template_id", lambda i: i.launch_template_id),
    ("autoscaling_group", lambda i: i.autoscaling_group),
    # The ``risk`` annotation (Instance.objects.with_risk()); empty when IMDSv2 is enforced.
    ("imdsv1_risk", lambda i: i.risk),
    ("v1_last_seen", lambda i: i.v1_last_seen.isoformat() if i.v1_last_seen else ""),
    ("last_seen", lambda i: i.last_seen.isoformat() if i.last_seen else ""),
    ("gone_at", lambda i: i.gone_at.isoformat() if i.gone_at else ""),
    ("counted", lambda i: "yes" if i.counted else "no"),
    ("prowler_ec2_instance_imdsv2_enabled", lambda i: ("PASS" if i.enforced else "FAIL") if i.counted else ""),
    ("aws_config_ec2_imdsv2_check", lambda i: (
        ("NON_COMPLIANT" if i.config_non_compliant else "COMPLIANT") if i.counted else "")),
)


def neutralise(value):
    if value is None:
        return ""
    text = str(value)
    # Spreadsheets skip leading whitespace and line breaks before reading a formula.
    if text.startswith(FORMULA_PREFIXES) or text.lstrip().startswith(FORMULA_CHARACTERS):
        return "'" + text
    return text


class _Echo:
    """csv.writer wants a file; this one hands each line back to the generator."""

    def write(self, value):
        return value


def rows(instances):
    writer = csv.writer(_Echo())
    yield writer.writerow([name for name, _ in COLUMNS])
    for instance in instances.iterator(chunk_size=2000):
        yield writer.writerow([neutralise(get(instance)) for _, get in COLUMNS])


def instances_response(instances, filename):
    response = StreamingHttpResponse(rows(instances), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
