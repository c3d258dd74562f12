"""Links into the AWS Management Console, in the instance's own region and partition.

The console is per partition (aws, aws-cn, aws-us-gov) and opens a resource only in the region
named by ``?region=``; a link that omits it opens the user's last region and says "not found".
"""

from urllib.parse import quote

# (region prefix, console host) for the partitions other than the commercial one.
PARTITION_HOSTS = (("cn-", "console.amazonaws.cn"), ("us-gov-", "console.amazonaws-us-gov.com"))
COMMERCIAL_HOST = "console.aws.amazon.com"


def _ec2(region, fragment):
    host = next((host for prefix, host in PARTITION_HOSTS if region.startswith(prefix)), None)
    # The commercial console serves each region from its own host name.
    base = f"https://{host}" if host else f"https://{region}.{COMMERCIAL_HOST}"
    return f"{base}/ec2/home?region={quote(region)}#{fragment}"


def instance_url(region, instance_id):
    return _ec2(region, f"InstanceDetails:instanceId={quote(instance_id)}")


def launch_template_url(region, launch_template_id):
    return _ec2(region, f"LaunchTemplateDetails:launchTemplateId={quote(launch_template_id)}")


def autoscaling_group_url(region, group_name):
    return _ec2(region, f"AutoScalingGroupDetails:id={quote(group_name, safe='')};view=details")
