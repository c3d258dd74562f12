"""STS: a fresh AssumeRole into an account, for its health check.

The sessions in :mod:`fleet.aws.session` assume the role once and refresh it themselves; a health
check must see today's answer (the role may have been deleted since), so it asks again.
"""

from django.conf import settings

from .call import call
from .session import ROLE_SESSION_NAME, _boto3_session, _config, _sts_region


def assume_role(account):
    """AssumeRole into ``account``; returns the assumed role's ARN (or the caller's, without a role)."""
    sts = call(
        _boto3_session().client, "sts", region_name=_sts_region(), config=_config(settings.IMDSWEB_AWS_MAX_ATTEMPTS)
    )
    if not account.role_arn:
        return call(sts.get_caller_identity)["Arn"]
    kwargs = {"RoleArn": account.role_arn, "RoleSessionName": ROLE_SESSION_NAME}
    if account.external_id:
        kwargs["ExternalId"] = account.external_id
    return call(sts.assume_role, **kwargs)["AssumedRoleUser"]["Arn"]
