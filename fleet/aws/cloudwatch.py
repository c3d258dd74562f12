"""CloudWatch: IMDSv1 usage evidence per instance (MetadataNoToken, MetadataNoTokenRejected)."""

from datetime import timedelta

from django.utils import timezone

from .. import ratelimit
from .call import call
from .session import client

QUERIES_PER_CALL = 500
METRICS = ("MetadataNoToken", "MetadataNoTokenRejected")


def get_metadata_usage(account, region, instance_ids, days):
    """Return {instance_id: {"MetadataNoToken": (sum, last_seen|None), ...}} over ``days``.

    Each GetMetricData call carries up to 500 queries (two per instance).
    """
    end = timezone.now()
    start = end - timedelta(days=days)
    cw = call(client, account, region, "cloudwatch")
    queries = []
    by_query_id = {}
    for index, instance_id in enumerate(instance_ids):
        for metric in METRICS:
            query_id = f"m{index}_{metric.lower()}"
            by_query_id[query_id] = (instance_id, metric)
            queries.append(
                {
                    "Id": query_id,
                    "MetricStat": {
                        "Metric": {
                            "Namespace": "AWS/EC2",
                            "MetricName": metric,
                            "Dimensions": [{"Name": "InstanceId", "Value": instance_id}],
                        },
                        "Period": 86400,
                        "Stat": "Sum",
                    },
                    "ReturnData": True,
                }
            )
    usage = {instance_id: {metric: (0.0, None) for metric in METRICS} for instance_id in instance_ids}
    for offset in range(0, len(queries), QUERIES_PER_CALL):
        chunk = queries[offset : offset + QUERIES_PER_CALL]
        ratelimit.acquire(account.account_id, region, "GetMetricData")
        paginator = cw.get_paginator("get_metric_data")
        pages = call(list, paginator.paginate(MetricDataQueries=chunk, StartTime=start, EndTime=end))
        for page in pages:
            for result in page.get("MetricDataResults", []):
                instance_id, metric = by_query_id[result["Id"]]
                total, last = usage[instance_id][metric]
                for ts, value in zip(result.get("Timestamps", []), result.get("Values", []), strict=False):
                    total += value
                    if value > 0 and (last is None or ts > last):
                        last = ts
                usage[instance_id][metric] = (total, last)
    return usage
