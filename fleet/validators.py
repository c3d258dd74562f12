"""Validators for AWS identifiers, shared by models, forms and management commands."""

from django.core.validators import RegexValidator

account_id_validator = RegexValidator(
    r"^\d{12}\Z", "An AWS account id is exactly 12 digits.", code="invalid_account_id"
)
role_arn_validator = RegexValidator(
    r"^arn:aws(-[a-z]+)*:iam::\d{12}:role/[\w+=,.@/-]{1,512}\Z",
    "Enter an IAM role ARN such as arn:aws:iam::123456789012:role/imdsweb-reader.",
    code="invalid_role_arn",
)
instance_id_validator = RegexValidator(
    r"^i-([0-9a-f]{8}|[0-9a-f]{17})\Z",
    "An EC2 instance id looks like i-0123456789abcdef0.",
    code="invalid_instance_id",
)
region_validator = RegexValidator(
    r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d\Z",
    "Enter an AWS region code such as us-east-1.",
    code="invalid_region",
)
external_id_validator = RegexValidator(
    r"^[\w+=,.@:/-]{2,1224}\Z",
    "An external id is 2-1224 characters of letters, digits and +=,.@:/-",
    code="invalid_external_id",
)


def role_arn_account(role_arn):
    """The account id field of an IAM role ARN (arn:PARTITION:iam::ACCOUNT:role/NAME), or None when
    it is not one."""
    from django.core.exceptions import ValidationError

    try:
        role_arn_validator(role_arn)
    except ValidationError:
        return None
    return role_arn.split(":")[4]


def validate_regions(value):
    from django.core.exceptions import ValidationError

    if not isinstance(value, list) or not value:
        raise ValidationError("Give at least one region.", code="no_regions")
    for region in value:
        region_validator(region)
    if len(set(value)) != len(value):
        raise ValidationError("A region is listed twice.", code="duplicate_region")


def validate_region_list(value):
    """A possibly empty list of region codes (an allow or deny list)."""
    from django.core.exceptions import ValidationError

    if not isinstance(value, list):
        raise ValidationError("Give a list of regions.", code="not_a_list")
    for region in value:
        region_validator(region)
