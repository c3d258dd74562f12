"""HTTP connections: kept open between calls, as AWS's are, without one request eating the next."""

from __future__ import annotations

import http.client
import socket
import urllib.parse

import pytest
import urllib3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from .conftest import error_of

DESCRIBE_REGIONS = "Action=DescribeRegions&Version=2016-11-15"


def _connection(sim) -> http.client.HTTPConnection:
    url = urllib.parse.urlsplit(sim.endpoint_url)
    return http.client.HTTPConnection(url.hostname, url.port, timeout=10)


def opened(monkeypatch) -> list:
    """Every TCP connection urllib3 (so botocore) opens from here on."""
    connections = []
    new_conn = urllib3.connection.HTTPConnection._new_conn
    monkeypatch.setattr(urllib3.connection.HTTPConnection, "_new_conn",
                        lambda self: connections.append(self) or new_conn(self))
    return connections


def test_a_botocore_client_makes_all_its_calls_over_one_connection(account, sim, monkeypatch):
    _, client = account
    ec2 = client("ec2")
    ec2.describe_instances()  # the client's connection is open from here on
    connections = opened(monkeypatch)
    for _ in range(20):
        ec2.describe_instances()
    assert connections == []


def test_pipelined_requests_on_one_socket_each_get_their_own_answer(sim):
    """The second request is in the socket before the first is answered: the first's body must not
    be read past its Content-Length, nor the second discarded as left-over input."""
    url = urllib.parse.urlsplit(sim.endpoint_url)
    requests = [_signed_ec2_request(sim, action) for action in ("DescribeRegions", "DescribeAvailabilityZones")]
    with socket.create_connection((url.hostname, url.port), timeout=10) as raw:
        raw.sendall(b"".join(requests))
        stream = raw.makefile("rb")
        answers = [_read_response(stream) for _ in requests]
    (first_status, first_headers, first), (second_status, _, second) = answers
    assert (first_status, second_status) == (200, 200)
    assert first_headers.get("connection") != "close"
    assert b"<regionInfo>" in first and b"<availabilityZoneInfo>" not in first
    assert b"<availabilityZoneInfo>" in second


def _signed_ec2_request(sim, action: str) -> bytes:
    """The bytes botocore would send for an EC2 query call: SigV4-signed, with a Content-Length."""
    url = urllib.parse.urlsplit(sim.endpoint_url)
    body = f"Action={action}&Version=2016-11-15"
    request = AWSRequest(method="POST", url=sim.endpoint_url + "/", data=body,
                         headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    SigV4Auth(Credentials("testing", "testing"), "ec2", "us-east-1").add_auth(request)
    head = "".join(f"{name}: {value}\r\n" for name, value in request.headers.items())
    return (f"POST / HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Length: {len(body)}\r\n{head}\r\n{body}").encode()


def _read_response(stream):
    """(status, lower-cased headers, body) of one Content-Length response off a raw stream."""
    status = int(stream.readline().split()[1])
    headers = {}
    while (line := stream.readline().decode()) not in ("\r\n", ""):
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, stream.read(int(headers["content-length"]))


def test_a_body_the_app_does_not_read_is_skipped_before_the_next_request(sim):
    """The admin endpoint's GET ignores a body; the next request on the connection still works."""
    conn = _connection(sim)
    conn.request("GET", "/_imdssim/stats", body=b"x" * 5000, headers={"Content-Length": "5000"})
    first = conn.getresponse()
    assert first.status == 200
    first.read()
    kept = conn.sock
    conn.request("GET", "/_imdssim/stats")
    second = conn.getresponse()
    assert second.status == 200
    assert b"actions" in second.read()
    assert conn.sock is kept  # the same connection, not a new one
    conn.close()


def test_a_client_that_asks_to_close_gets_its_connection_closed(sim):
    conn = _connection(sim)
    conn.request("GET", "/_imdssim/stats", headers={"Connection": "close"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Connection") == "close"
    response.read()
    assert response.will_close


def test_a_chunked_request_is_answered_and_its_connection_closed(sim):
    conn = _connection(sim)
    conn.putrequest("POST", "/")
    conn.putheader("Content-Type", "application/x-www-form-urlencoded")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    body = DESCRIBE_REGIONS.encode()
    conn.send(f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
    response = conn.getresponse()
    response.read()
    assert response.getheader("Connection") == "close"
    assert response.will_close


def test_failed_answers_keep_the_connection(account, sim, monkeypatch):
    _, client = account
    ec2 = client("ec2")
    ec2.describe_instances()
    sim.configure(error_rate=1.0)
    connections = opened(monkeypatch)
    for _ in range(3):
        with pytest.raises(ClientError) as excinfo:
            ec2.describe_instances()
        assert error_of(excinfo)[:2] == ("InternalError", 500)
    assert connections == []
