"""Who an instance or a source belongs to, from the tags AWS and managed services put on them.

Attribution: EC2 tags an instance launched from a launch template with
``aws:ec2launchtemplate:id`` / ``aws:ec2launchtemplate:version``, and Auto Scaling tags its
instances ``aws:autoscaling:groupName``. Managed owners: EKS node groups (``eks:cluster-name``,
``eks:nodegroup-name``), Elastic Beanstalk (``elasticbeanstalk:environment-name``), EMR
(``aws:elasticmapreduce:job-flow-id``) and CloudFormation (``aws:cloudformation:stack-name``).
Changing what such an owner manages outside it breaks or drifts it.
"""

from .choices import ManagedOwner

LAUNCH_TEMPLATE_ID = "aws:ec2launchtemplate:id"
LAUNCH_TEMPLATE_VERSION = "aws:ec2launchtemplate:version"
AUTOSCALING_GROUP = "aws:autoscaling:groupName"

# Checked in this order: a node group that a CloudFormation stack created is still EKS's to change
# (EKS replaces what it manages), so the more specific owner wins.
OWNER_TAGS = (
    (ManagedOwner.EKS, ("eks:nodegroup-name", "eks:cluster-name")),
    (ManagedOwner.ELASTIC_BEANSTALK, ("elasticbeanstalk:environment-name",)),
    (ManagedOwner.EMR, ("aws:elasticmapreduce:job-flow-id",)),
    (ManagedOwner.CLOUDFORMATION, ("aws:cloudformation:stack-name",)),
)


def attribution(tags):
    """(launch template id, its version, Auto Scaling group) from an instance's tags; '' when absent."""
    tags = tags or {}
    return (
        tags.get(LAUNCH_TEMPLATE_ID, "")[:32],
        tags.get(LAUNCH_TEMPLATE_VERSION, "")[:16],
        tags.get(AUTOSCALING_GROUP, "")[:255],
    )


def managed_owner(tags):
    """(ManagedOwner value or '', a detail naming the owner's resource) from tags."""
    tags = tags or {}
    for owner, keys in OWNER_TAGS:
        values = [tags[key] for key in keys if tags.get(key)]
        if values:
            if owner == ManagedOwner.EKS and "eks:cluster-name" in tags and "eks:nodegroup-name" in tags:
                return owner, f"cluster {tags['eks:cluster-name']}, node group {tags['eks:nodegroup-name']}"[:255]
            return owner, values[0][:255]
    return "", ""
