"""imdssim.serialize: moto's EC2 answers written faster, and byte for byte as moto writes them."""

from __future__ import annotations

import re

import boto3
import pytest
import xmltodict
from moto import mock_aws
from moto.core import serialize as moto_serialize
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.test import Client

from imdssim import serialize
from imdssim.testing import launch


@pytest.mark.parametrize("body", [
    {"R": None},
    {"R": ""},
    {"R": "text"},
    {"R": {"a": True, "b": False, "c": 0, "d": 1.5, "e": None, "f": ""}},
    {"R": {"list": [1, "two", None, {"x": "y"}, ""], "empty": [], "tuple": (), "nested": [[1, 2]]}},
    {"R": {"@xmlns": "http://ec2.amazonaws.com/doc/2016-11-15/", "item": {"@id": 3, "@none": None, "#text": "v"}}},
    {"R": {"@xmlns": {"": "urn:a", "b": "urn:b"}, "k": "v"}},
    {"R": {"#text": "after", "child": "first"}},
    {"R": {"#text": None, "child": ()}},
    {"R": {"esc": "<a & b> \"quoted\" 'single'", "@attr": "<&\"'>\n\t", "uni": "żółw 🐢"}},
    {"R": {"deep": {"deeper": {"deepest": [{"k": "1"}, {"k": None}]}}}},
    {"R": {"bytes": b"raw", "tuple": ("0", 1, None), "set": frozenset({"only"})}},
])
def test_the_writer_writes_what_xmltodict_writes(body):
    expected = xmltodict.unparse(_copy(body), full_document=True, short_empty_elements=True)
    assert serialize.unparse(_copy(body)) == expected


@pytest.mark.parametrize("body", [{"a": 1, "b": 2}, {"R": [1, 2]}, {}, {"R": {"bad name": 1}}, {"R": {"@x y": 1}}])
def test_what_xmltodict_refuses_is_refused_alike(body):
    with pytest.raises(ValueError) as theirs:
        xmltodict.unparse(body, full_document=True, short_empty_elements=True)
    with pytest.raises(ValueError) as ours:
        serialize.unparse(body)
    assert str(ours.value) == str(theirs.value)


def _copy(body):
    """A fresh body each time, so that neither writer sees what the other changed."""
    return {key: _fresh(value) for key, value in body.items()}


def _fresh(value):
    if isinstance(value, dict):
        return {k: _fresh(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fresh(v) for v in value]
    return value


def _answers(client):
    """moto's answers to a few EC2 reads that go through its serializer."""
    environ_base = {
        "HTTP_AUTHORIZATION": "AWS4-HMAC-SHA256 Credential=testing/20261203/eu-west-1/ec2/aws4_request, "
                              "SignedHeaders=host, Signature=0",
        "HTTP_HOST": "ec2.eu-west-1.amazonaws.com",
    }
    bodies = []
    for query in ("Action=DescribeInstances&Version=2016-11-15",
                  "Action=DescribeLaunchTemplates&Version=2016-11-15",
                  "Action=DescribeImages&Version=2016-11-15&Owner.1=self",
                  "Action=DescribeVpcs&Version=2016-11-15"):
        answer = client.post("/", data=query, environ_base=environ_base,
                             content_type="application/x-www-form-urlencoded")
        assert answer.status_code == 200, answer.get_data(as_text=True)
        # moto's request ids are random: the rest must be the same
        bodies.append(re.sub(rb"<requestId>[^<]*</requestId>", b"", answer.get_data()))
    return bodies


def test_real_answers_are_byte_for_byte_moto_s(monkeypatch):
    """DescribeInstances of instances with tags, block devices, network interfaces and metadata
    options, and three other reads: the same bytes with the patches as with moto's own code."""
    with mock_aws():  # moto's backends start empty and are emptied again at the end
        ec2 = boto3.client("ec2", region_name="eu-west-1", aws_access_key_id="testing",
                           aws_secret_access_key="testing")
        ids = launch(ec2, 3, HttpTokens="optional")
        ec2.create_tags(Resources=ids, Tags=[{"Key": "Name", "Value": "a <b> & 'c'"}, {"Key": "team", "Value": ""}])
        ec2.modify_instance_metadata_options(InstanceId=ids[0], HttpTokens="required")
        ec2.create_launch_template(LaunchTemplateName="lt", LaunchTemplateData={"MetadataOptions": {"HttpTokens": "optional"}})
        client = Client(DomainDispatcherApplication(create_backend_app))
        monkeypatch.setattr(moto_serialize.AttributePicker, "__call__", serialize._pick)
        monkeypatch.setattr(moto_serialize.EC2Serializer, "_serialize_body", serialize._serialize_body)
        patched = _answers(client)
        monkeypatch.undo()  # moto's own code again
        assert moto_serialize.EC2Serializer._serialize_body is serialize._original_body
        original = _answers(client)
    assert b"a &lt;b&gt; &amp; 'c'" in patched[0] and all(i.encode() in patched[0] for i in ids)
    assert b"<launchTemplateName>lt</launchTemplateName>" in patched[1]
    assert patched == original
