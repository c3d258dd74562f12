"""The instance list's rows, written in Python (fleet.tables.instance_rows), are the HTML the
template loop they replaced wrote, for every kind of value a row can hold."""

import datetime

import pytest
from django.template import Context, Template
from django.test.html import parse_html
from django.utils import timezone

from fleet.models import Instance
from fleet.tables import instance_rows
from fleet.tests.factories import AccountFactory, InstanceFactory

pytestmark = pytest.mark.django_db

# The loop of templates/fleet/partials/keyset_table.html before its rows were written in Python.
REFERENCE = """{% load humanize fleet_tags %}{% for i in table.keyset.rows %}
<tr class="{% if i.gone_at %}gone {% endif %}{% cycle 'even' 'odd' %}">
<td><input type="checkbox" name="ids" value="{{ i.instance_id }}" aria-label="select" /></td>
<td class="mono nowrap"><a href="{% url 'fleet:instance_detail' i.instance_id %}">{{ i.instance_id }}</a></td>
<td>{{ i.name }}</td>
<td>{{ i.account }}{% if i.account.ou_path %} <small class="muted">{{ i.account.ou_path }}</small>{% endif %}</td>
<td class="nowrap">{{ i.region }}</td>
<td>{{ i.tags|get_item:table.owner_tag|default:"—" }}</td>
<td class="nowrap">{{ i.instance_type|default:"—" }}{% if i.platform_details %}<br><small class="muted">{{ i.platform_details }}</small>{% endif %}</td>
<td>{{ i.instance_state }}</td>
<td><span class="badge badge-{% if i.http_tokens == 'required' %}good{% elif i.http_endpoint == 'disabled' %}neutral{% else %}bad{% endif %}">{{ i.http_tokens|default_if_none:"absent" }}</span></td>
<td><span class="badge badge-{% if i.http_endpoint == 'disabled' %}good{% else %}neutral{% endif %}">{{ i.http_endpoint|default_if_none:"absent" }}</span></td>
<td>{% if i.hop_limit is not None %}<span class="badge badge-{% if i.hop_limit == 1 %}neutral{% else %}warn{% endif %}">{{ i.hop_limit }}</span>{% else %}—{% endif %}</td>
<td><span class="badge badge-{% if i.metadata_state == 'pending' %}warn{% else %}neutral{% endif %}">{{ i.metadata_state|default_if_none:"absent" }}</span></td>
<td>{{ i.instance_metadata_tags|default_if_none:"absent" }}</td>
<td>{% if i.v1_calls is None %}not measured{% elif i.v1_calls %}<span class="badge badge-bad">{{ i.v1_calls|intcomma }}</span>{% else %}<span class="badge badge-good">0</span>{% endif %}</td>
<td>{% if i.risk %}<span class="badge badge-{% if i.risk == 'no_role' %}warn{% else %}bad{% endif %}" data-risk="{{ i.risk }}">{{ i.risk|risk_label }}</span>{% else %}—{% endif %}</td>
<td class="small">{% if i.iam_instance_profile_arn %}<span title="{{ i.iam_instance_profile_arn }}">{{ i.iam_instance_profile_arn|profile_name }}</span>{% else %}none{% endif %}</td>
<td class="mono small nowrap">{{ i.vpc_id|default_if_none:"—" }}<br>{{ i.subnet_id|default_if_none:"—" }}</td>
<td class="mono small nowrap">{{ i.private_ip|default_if_none:"—" }}<br>{{ i.public_ip|default_if_none:"no public IP" }}</td>
<td class="nowrap">{{ i.launch_time|date:"SHORT_DATETIME_FORMAT"|default:"—" }}</td>
<td class="nowrap">{{ i.last_seen|date:"SHORT_DATETIME_FORMAT" }}</td>
</tr>
{% endfor %}"""


def reference(rows, owner_tag):
    return Template(REFERENCE).render(Context({"table": {"keyset": {"rows": rows}, "owner_tag": owner_tag}}))


@pytest.mark.parametrize("zone", ["UTC", "Australia/Sydney"])
def test_rows_are_what_the_template_wrote(zone):
    plain = AccountFactory(name="plain & <simple>", ou_path="")
    in_ou = AccountFactory(name="prod", ou_path="Workloads/Prod")
    launched = datetime.datetime(2026, 3, 4, 23, 30, tzinfo=datetime.UTC)
    InstanceFactory(account=plain, name='<b>"web"</b>', http_tokens="required", http_endpoint="enabled", hop_limit=1,
                    metadata_state="applied", instance_metadata_tags="enabled", v1_calls=None, tags={"Team": "a&b"},
                    platform_details="Linux/UNIX", iam_instance_profile_arn="arn:aws:iam::1:instance-profile/p/web",
                    public_ip="203.0.113.9", launch_time=launched)
    InstanceFactory(account=in_ou, name="", http_tokens="optional", http_endpoint="disabled", hop_limit=2,
                    metadata_state="pending", instance_metadata_tags=None, v1_calls=0, tags={},
                    platform_details="", iam_instance_profile_arn="", public_ip=None, vpc_id=None, subnet_id=None,
                    private_ip=None, launch_time=None, instance_type="")
    InstanceFactory(account=in_ou, http_tokens=None, http_endpoint=None, hop_limit=None, metadata_state=None,
                    v1_calls=1234567, gone_at=timezone.now(), tags={"Team": ""})
    rows = list(Instance.objects.with_risk().select_related("account").order_by("pk"))
    assert {row.risk for row in rows} - {None}  # a risk badge is among them
    with timezone.override(zone):
        assert parse_html(instance_rows(rows, "Team")) == parse_html(reference(rows, "Team"))
        assert parse_html(instance_rows(rows, "Owner")) == parse_html(reference(rows, "Owner"))
