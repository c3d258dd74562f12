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


def get_rejected_calls(account, region, instance_ids, since):
    """Return {instance_id: IMDSv1 calls refused since ``since``} (``MetadataNoTokenRejected``, Sum,
    one-minute periods): what a staged rollout's soak watches. Up to 500 instances per call."""
    cw = call(client, account, region, "cloudwatch")
    end = timezone.now() + timedelta(minutes=1)  # the current minute's calls included
    rejected = dict.fromkeys(instance_ids, 0.0)
    ids = list(instance_ids)
    for offset in range(0, len(ids), QUERIES_PER_CALL):
        chunk = ids[offset : offset + QUERIES_PER_CALL]
        queries = [
            {"Id": f"r{index}", "ReturnData": True, "MetricStat": {
                "Metric": {"Namespace": "AWS/EC2", "MetricName": "MetadataNoTokenRejected",
                           "Dimensions": [{"Name": "InstanceId", "Value": instance_id}]},
                "Period": 60, "Stat": "Sum"}}
            for index, instance_id in enumerate(chunk)
        ]
        ratelimit.acquire(account.account_id, region, "GetMetricData")
        paginator = cw.get_paginator("get_metric_data")
        for page in call(list, paginator.paginate(MetricDataQueries=queries, StartTime=since, EndTime=end)):
            for result in page.get("MetricDataResults", []):
                rejected[chunk[int(result["Id"][1:])]] += sum(result.get("Values", []))
    return rejected
