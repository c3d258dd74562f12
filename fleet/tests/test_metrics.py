"""/metrics: read by prometheus_client's own text parser; access by token or address; AWS counters."""

import json
import re
import shutil
import subprocess
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from fleet import aws, posture, sync, tasks
from fleet.aws import counters
from fleet.choices import SyncStatus
from fleet.models import DriftEvent, SyncRun
from fleet.tests.conftest import AMBIENT_ACCOUNT, ec2_in
from fleet.tests.factories import AccountFactory, ChangeItemFactory, InstanceFactory
from imdssim.testing import launch

METRICS = "/metrics"


def parse(response):
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


@pytest.fixture
def local_counters(settings, monkeypatch):
    """AWS call counters in this process only (no shared Redis), starting from zero."""
    settings.IMDSWEB_REDIS_URL = ""
    monkeypatch.setattr(counters, "_redis", None)
    counters._local.clear()
    yield
    counters._local.clear()


@pytest.mark.django_db
def test_posture_engine_and_sync_metrics_parse(client, local_counters):
    prod = AccountFactory(account_id="111111111111", regions=["us-east-1"])
    InstanceFactory(account=prod, http_tokens="required")
    InstanceFactory(account=prod, http_tokens="required", metadata_state="pending")
    broken = InstanceFactory(account=prod, v1_calls=3)
    InstanceFactory(account=prod, region="eu-west-1")
    posture.refresh_all()
    ChangeItemFactory(state="queued")
    ChangeItemFactory(state="queued")
    ChangeItemFactory(state="pending", submitted_at=timezone.now() - timedelta(minutes=5))
    DriftEvent.objects.create(kind="new_v1", account=prod, region="us-east-1", instance=broken,
                              detected_at=timezone.now())
    SyncRun.objects.create(account=prod, region="us-east-1", status=SyncStatus.SUCCEEDED,
                           started_at=timezone.now() - timedelta(minutes=3), finished_at=timezone.now() - timedelta(minutes=2))
    counters.record("ec2", "ModifyInstanceMetadataOptions", "RequestLimitExceeded")
    counters.record("ec2", "ModifyInstanceMetadataOptions")

    samples = parse(client.get(METRICS))  # no login: Prometheus has none; loopback is allowed

    east = (("account_id", "111111111111"), ("region", "us-east-1"))
    assert samples[("imdsweb_instances", east)] == 3
    assert samples[("imdsweb_instances_enforced", east)] == 2
    assert samples[("imdsweb_instances_enforced_applied", east)] == 1
    assert samples[("imdsweb_instances_allowing_imdsv1", east)] == 1
    assert samples[("imdsweb_instances_pending", east)] == 1
    assert samples[("imdsweb_instances_imdsv1_callers", east)] == 1
    assert samples[("imdsweb_change_items", (("state", "queued"),))] == 2
    assert samples[("imdsweb_change_items", (("state", "submitting"),))] == 0
    assert ("imdsweb_change_items", (("state", "applied"),)) not in samples  # final states are not counted
    assert samples[("imdsweb_change_queue_depth", ())] == 2
    assert 290 < samples[("imdsweb_change_pending_oldest_seconds", ())] < 400
    assert samples[("imdsweb_drift_events_total", (("kind", "new_v1"),))] == 1
    assert 100 < samples[("imdsweb_sync_last_success_age_seconds", east)] < 200
    assert samples[("imdsweb_sync_stale", east)] == 0
    modify = (("operation", "ModifyInstanceMetadataOptions"), ("service", "ec2"))
    assert samples[("imdsweb_aws_calls_total", modify)] == 2
    assert samples[("imdsweb_aws_throttled_total", modify)] == 1
    assert samples[("imdsweb_aws_errors_total", (("code", "RequestLimitExceeded"), *modify))] == 1
    # Low cardinality: no sample carries an instance id.
    assert not any("i-" in value for _, labels in samples for _, value in labels)


@pytest.mark.django_db
def test_access_by_token_or_allowed_address(client, settings):
    settings.IMDSWEB_METRICS_TOKEN = "s3cret-token"
    settings.IMDSWEB_METRICS_ALLOW = ["10.1.0.0/16"]
    assert client.get(METRICS).status_code == 401  # loopback is no longer listed
    assert client.get(METRICS, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get(METRICS, REMOTE_ADDR="10.2.0.9").status_code == 401
    assert client.get(METRICS, headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    assert client.get(METRICS, REMOTE_ADDR="10.1.3.4").status_code == 200
    # A wrong token from an allowed address is still refused: a sent token decides.
    assert client.get(METRICS, REMOTE_ADDR="10.1.3.4", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.post(METRICS, REMOTE_ADDR="10.1.3.4").status_code == 405
    settings.IMDSWEB_METRICS_TOKEN = ""
    assert client.get(METRICS, headers={"Authorization": "Bearer "}).status_code == 401  # no token configured


@pytest.mark.django_db(transaction=True)
def test_aws_calls_are_counted_per_attempt(moto_endpoint, client, local_counters, settings):
    settings.IMDSWEB_AWS_MAX_ATTEMPTS = 2
    launch(ec2_in(moto_endpoint, AMBIENT_ACCOUNT, "us-east-1"), 5)
    account = AccountFactory(account_id=AMBIENT_ACCOUNT, regions=["us-east-1"])
    sync.sync_region(account, "us-east-1")
    with pytest.raises(aws.PermanentAwsError):
        aws.modify_instance_metadata_options(account, "us-east-1", "i-0123456789abcdef0", {"http_tokens": "required"})

    samples = parse(client.get(METRICS))
    describe = (("operation", "DescribeInstances"), ("service", "ec2"))
    assert samples[("imdsweb_aws_calls_total", describe)] == 1
    # moto does not implement GetInstanceMetadataDefaults: it answers an HTML error page, which
    # botocore cannot parse (and does not retry).
    defaults = (("operation", "GetInstanceMetadataDefaults"), ("service", "ec2"))
    assert samples[("imdsweb_aws_calls_total", defaults)] == 1
    assert samples[("imdsweb_aws_errors_total", (("code", "InvalidResponse"), *defaults))] == 1
    modify = (("operation", "ModifyInstanceMetadataOptions"), ("service", "ec2"))
    assert samples[("imdsweb_aws_errors_total", (("code", "InvalidInstanceID.NotFound"), *modify))] == 1
    assert ("imdsweb_aws_throttled_total", modify) not in samples  # an error, not a throttle


MONITORING = Path(__file__).resolve().parents[2] / "docs" / "monitoring"


@pytest.mark.django_db
def test_dashboard_and_alerts_use_only_metrics_we_serve(client):
    served = {family.name for family in text_string_to_metric_families(client.get(METRICS).content.decode())}
    served |= {f"{name}_total" for name in served}  # counters are served with the _total suffix
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    rules = yaml.safe_load((MONITORING / "prometheus-alerts.yml").read_text())
    exprs += [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    used = {name for expr in exprs for name in re.findall(r"\bimdsweb_[a-z0-9_]+", expr)}
    assert used and used <= served, used - served
    assert {rule["alert"] for group in rules["groups"] for rule in group["rules"]} >= {
        "ImdswebNewImdsv1Instances", "ImdswebSyncStale", "ImdswebLikelyBreakage"}


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool (Debian package prometheus) not installed")
def test_alert_rules_pass_promtool():
    result = subprocess.run(["promtool", "check", "rules", str(MONITORING / "prometheus-alerts.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_task_sends_its_call_counts_in_one_round_trip_when_it_ends(settings, monkeypatch):
    """Inside a worker's task (task_prerun/postrun) the counts wait for its end; an eager task in
    it (a nested hold) does not send the outer one's counts early; snapshot sees held counts."""
    import redis as redis_lib

    monkeypatch.setattr(counters, "KEY", f"imdsweb:test-aws-calls:{uuid.uuid4().hex}")
    monkeypatch.setattr(counters, "_redis", None)
    shared = redis_lib.Redis.from_url(settings.IMDSWEB_REDIS_URL)
    sent = []
    real_send = counters._send
    monkeypatch.setattr(counters, "_send", lambda counts: (sent.append(dict(counts)), real_send(counts)))
    try:
        tasks.hold_aws_call_counts()
        counters.record("ec2", "ModifyInstanceMetadataOptions")
        counters.record("ec2", "ModifyInstanceMetadataOptions", "RequestLimitExceeded")
        counters.hold()  # an eager task inside this one
        counters.record("ec2", "DescribeInstances")
        counters.flush()
        assert sent == [] and not shared.exists(counters.KEY)
        seen = counters.snapshot()
        assert seen[("calls", "ec2", "ModifyInstanceMetadataOptions", "")] == 2
        tasks.send_aws_call_counts()
        calls, modify = counters.field("calls", "ec2", "ModifyInstanceMetadataOptions"), "ModifyInstanceMetadataOptions"
        assert sent == [{calls: 2, counters.field("errors", "ec2", modify, "RequestLimitExceeded"): 1,
                         counters.field("throttled", "ec2", modify): 1,
                         counters.field("calls", "ec2", "DescribeInstances"): 1}]
        assert int(shared.hget(counters.KEY, calls)) == 2
        assert counters.snapshot()[("calls", "ec2", modify, "")] == 2  # sent, not counted twice
        counters.record("ec2", "DescribeInstances")  # outside a task: sent at once
        assert len(sent) == 2 and int(shared.hget(counters.KEY, counters.field("calls", "ec2", "DescribeInstances"))) == 2
    finally:
        shared.delete(counters.KEY)
        counters._held.clear()
        counters._holds = 0
        monkeypatch.setattr(counters, "_redis", None)
