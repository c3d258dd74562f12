"""The WSGI application and HTTP server: moto wrapped in the IMDS fidelity layer.

``SimulatorApp`` sits in front of moto's own dispatcher. For EC2 calls it adds latency and random
faults, enforces the throttling buckets, answers the IMDS actions moto gets wrong (``ec2_imds``)
and lets moto answer everything else (with ``launches``' patches: what a new instance gets), hooking
StartInstances so stopped-instance changes take effect. STS AssumeRole is checked against the demo
roles' ExternalIds and the organization's missing roles; DescribeRegions and read-only roles are
answered by ``organization``; CloudWatch and other services pass straight through.
"""

from __future__ import annotations

import logging
import random
import socket
import time
from xml.sax.saxutils import escape

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import BaseWSGIServer, make_server

from . import launches, serialize
from .admin import PREFIX, AdminEndpoint
from .awsquery import Ec2Error, QueryRequest, new_request_id, read_query_request
from .ec2_imds import ImdsModel
from .organization import OrganizationModel
from .throttle import Knobs, Stats, Throttler
from .workloads import WorkloadModel

log = logging.getLogger(__name__)

# Actions that change how an instance's IMDSv1 calls count: the calls before them are written first.
WORKLOAD_OBSERVERS = frozenset({"ModifyInstanceMetadataOptions", "StartInstances", "StopInstances",
                                "TerminateInstances"})


def _status_code(status: str) -> int:
    return int(status.split(" ", 1)[0])


class SimulatorApp:
    """WSGI app: admin endpoint, STS ExternalId check, EC2 fidelity layer, then moto."""

    def __init__(self, knobs: Knobs | None = None, rng: random.Random | None = None):
        self.knobs = knobs or Knobs()
        self.stats = Stats()
        self.throttler = Throttler(self.knobs)
        self.imds = ImdsModel(self.knobs, on_modify=self.stats.record_modify)
        launches.install(self.imds)
        serialize.install()
        self.workloads = WorkloadModel(self.knobs)
        self.moto = DomainDispatcherApplication(create_backend_app)
        self.admin = AdminEndpoint(self)
        self.rng = rng or random.Random()
        self.demo_accounts: list[dict] = []
        self.role_external_ids: dict[str, str] = {}  # role ARN -> ExternalId its trust policy requires
        self.org = OrganizationModel()
        self.organization: dict = {}  # the seeded organization, as /_imdssim/organization shows it

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO", "").startswith(PREFIX + "/"):
            return self.admin(environ, start_response)
        request = read_query_request(environ)
        if request.service == "sts" and request.action == "AssumeRole":
            denied = self.org.assume_role_denied(request) or self._check_external_id(request)
            if denied is not None:
                start_response("403 Forbidden", _xml_headers(denied))
                return [denied]
        if request.service == "monitoring" or request.action in WORKLOAD_OBSERVERS:
            # IMDSv1 calls made so far are counted by the options they met (imdssim.workloads).
            self.workloads.catch_up()
        if not request.is_ec2:
            return self.moto(environ, start_response)
        status, headers, body = self._ec2(request, environ)
        start_response(status, headers)
        return [body]

    # --- EC2 --------------------------------------------------------------------------------
    def _ec2(self, request: QueryRequest, environ) -> tuple[str, list, bytes]:
        action = request.action
        if self.knobs.latency_ms:
            time.sleep(self.knobs.latency_ms / 1000)
        try:
            self._inject_faults(request)
            self.org.check_authorized(request)
            if action == "DescribeRegions":
                body = self.org.describe_regions(request)
                result = ("200 OK", _xml_headers(body), body)
            elif action in ImdsModel.HANDLED:
                body = self.imds.handle(request)
                result = ("200 OK", _xml_headers(body), body)
            else:
                result = self._call_moto(request, environ)
        except Ec2Error as exc:
            self.stats.record(action, _outcome(exc.code))
            if exc.code not in ("DryRunOperation", "RequestLimitExceeded"):
                log.info("%s in %s/%s failed: %s", action, request.account_id, request.region, exc)
            body = exc.body()
            return f"{exc.status} {_reason(exc.status)}", _xml_headers(body), body
        except Exception:
            log.exception("simulator failed on %s", action)
            self.stats.record(action, "error")
            body = Ec2Error("InternalError", "An internal error has occurred.", 500).body()
            return "500 Internal Server Error", _xml_headers(body), body
        # moto answers DryRun of the actions it handles with HTTP 412 DryRunOperation.
        status = _status_code(result[0])
        self.stats.record(action, "ok" if status < 400 or status == 412 else "error")
        return result

    def _inject_faults(self, request: QueryRequest) -> None:
        if self.knobs.throttle_rate and self.rng.random() < self.knobs.throttle_rate:
            raise Ec2Error("RequestLimitExceeded", "Request limit exceeded.", 503)
        if self.knobs.error_rate and self.rng.random() < self.knobs.error_rate:
            raise Ec2Error("InternalError", "An internal error has occurred.", 500)
        if not self.throttler.allow(request.account_id, request.region, request.action):
            raise Ec2Error("RequestLimitExceeded", "Request limit exceeded.", 503)

    def _call_moto(self, request: QueryRequest, environ) -> tuple[str, list, bytes]:
        captured: dict = {}

        def capture(status, headers, exc_info=None):
            captured.update(status=status, headers=headers)

        chunks = self.moto(environ, capture)
        try:
            body = b"".join(chunks)
        finally:
            if hasattr(chunks, "close"):
                chunks.close()
        if _status_code(captured["status"]) == 200 and not request.dry_run:
            if request.action in ("StartInstances", "StopInstances", "TerminateInstances"):
                ids = request.indexed("InstanceId")
                if request.action == "StartInstances":
                    self.imds.on_started(request.account_id, request.region, ids)
                self.imds.on_state_changed(request.account_id, request.region, ids)
        # The body is complete now; drop a Content-Length moto may have computed differently.
        headers = [(k, v) for k, v in captured["headers"] if k.lower() != "content-length"]
        return captured["status"], headers + [("Content-Length", str(len(body)))], body

    # --- STS --------------------------------------------------------------------------------
    def _check_external_id(self, request: QueryRequest) -> bytes | None:
        """moto ignores ExternalId; the demo role that requires one refuses calls without it."""
        role_arn = request.params.get("RoleArn", "")
        required = self.role_external_ids.get(role_arn)
        if required is None or request.params.get("ExternalId") == required:
            return None
        log.info("AssumeRole of %s refused: wrong or missing ExternalId", role_arn)
        message = escape(f"User is not authorized to perform: sts:AssumeRole on resource: {role_arn}")
        return (
            '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
            f"<Code>AccessDenied</Code><Message>{message}</Message></Error>"
            f"<RequestId>{new_request_id()}</RequestId></ErrorResponse>"
        ).encode()


def _outcome(error_code: str) -> str:
    """How an error counts in the stats; a DryRunOperation answer is a successful dry run."""
    return {"RequestLimitExceeded": "throttled", "DryRunOperation": "ok"}.get(error_code, "error")


def _xml_headers(body: bytes) -> list[tuple[str, str]]:
    return [("Content-Type", "text/xml"), ("Content-Length", str(len(body)))]


def _reason(status: int) -> str:
    return {
        400: "Bad Request",
        403: "Forbidden",
        412: "Precondition Failed",
        500: "Internal Server Error",
        503: "Service Unavailable",
    }.get(status, "Error")


class _Body:
    """The request's body as the app sees it: at most Content-Length bytes, the rest read by ``drain``."""

    def __init__(self, stream, length: int):
        self._stream = stream
        self.left = length

    def read(self, size: int = -1) -> bytes:
        size = self.left if size is None or size < 0 else min(size, self.left)
        data = self._stream.read(size) if size else b""
        self.left -= len(data)
        if size and not data:
            self.left = 0  # the client went away mid-body
        return data

    def readline(self, size: int = -1) -> bytes:
        size = self.left if size is None or size < 0 else min(size, self.left)
        data = self._stream.readline(size) if size else b""
        self.left -= len(data)
        return data

    def __iter__(self):
        while line := self.readline():
            yield line

    def drain(self) -> None:
        while self.left and self.read(65536):
            pass


class KeepAliveRequestHandler(MotoRequestHandler):
    """Moto's handler (it keeps underscored headers), with HTTP/1.1 keep-alive as AWS has it.

    Werkzeug always answers ``Connection: close``, because ``http.server`` cannot skip a body the
    app left unread before it reads the next request line. AWS keeps connections open and botocore
    pools them, so against werkzeug every call paid a new TCP connection and a new server thread:
    CPU on both sides that real AWS never costs the engine (measured by P5b). This handler keeps a
    connection open when the request's body has a known length: the app reads at most that many
    bytes, and whatever it left is read before the next request. A chunked request body, a client
    that asks to close, or an error in the app still closes the connection.
    """

    protocol_version = "HTTP/1.1"
    timeout = 75  # seconds a kept connection may sit idle (AWS closes idle ones too; botocore reconnects)
    _body: _Body | None = None

    def setup(self) -> None:
        super().setup()
        # A response goes out in several writes (status and headers, then the body): without this,
        # Nagle's algorithm holds the body of each answer on a kept connection for the client's
        # delayed ACK, ~40 ms a call.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def run_wsgi(self) -> None:
        length = self.headers.get("Content-Length", "0" if self.command in ("GET", "HEAD", "DELETE") else None)
        if "Transfer-Encoding" in self.headers or length is None or not length.strip().isdigit():
            self._body = None
            super().run_wsgi()  # werkzeug's Connection: close
            self.close_connection = True
            return
        # Werkzeug reads the app's input from self.rfile and, after the response, drains that stream
        # to its end: bounded here, both stop at this request's body, not at the next request line.
        stream = self.rfile
        self._body = self.rfile = _Body(stream, int(length))
        try:
            super().run_wsgi()
        finally:
            self.rfile = stream
        if not self.close_connection:
            self._body.drain()

    def send_header(self, keyword: str, value: str) -> None:
        if (self._body is not None and not self.close_connection  # (the client did not ask to close)
                and keyword.lower() == "connection" and value.lower() == "close"):
            return  # werkzeug's blanket close: this request's body is bounded, so the connection stays
        super().send_header(keyword, value)


def make_simulator_server(app: SimulatorApp, host: str, port: int) -> BaseWSGIServer:
    """A threaded werkzeug server whose connections stay open between calls, as AWS's do."""
    return make_server(host, port, app, threaded=True, request_handler=KeepAliveRequestHandler)
