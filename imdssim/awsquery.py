"""Parsing of AWS Query-protocol requests and rendering of EC2-style XML responses.

Owns everything the middleware needs to know about the wire format: which service, region,
account and action a request is for (from the SigV4 credential scope and the form body), and how
EC2 spells success and error bodies so that botocore parses them.
"""

from __future__ import annotations

import io
import re
import uuid
from dataclasses import dataclass, field
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

from moto.iam.models import get_account_id_from

EC2_XMLNS = "http://ec2.amazonaws.com/doc/2016-11-15/"

# "AWS4-HMAC-SHA256 Credential=AKID/20250101/us-east-1/ec2/aws4_request, SignedHeaders=..., Signature=..."
_CREDENTIAL_SCOPE = re.compile(r"Credential=([^/,\s]+)/\d{8}/([^/]+)/([^/]+)/aws4_request")


@dataclass
class QueryRequest:
    """One signed Query-protocol request, as far as the simulator cares."""

    service: str | None
    region: str
    access_key: str | None
    action: str | None
    params: dict[str, str] = field(default_factory=dict)

    @property
    def account_id(self) -> str:
        # moto records the access keys it hands out from sts:AssumeRole against the role's
        # account, so this resolves assumed-role credentials to the right backend.
        return get_account_id_from(self.access_key or "")

    @property
    def is_ec2(self) -> bool:
        return self.service == "ec2" and bool(self.action)

    @property
    def dry_run(self) -> bool:
        return self.params.get("DryRun", "").lower() == "true"

    def indexed(self, prefix: str) -> list[str]:
        """Values of a Query list parameter such as ``InstanceId.1``, ``InstanceId.2``..."""
        pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)$")
        found = sorted((int(m.group(1)), v) for k, v in self.params.items() if (m := pattern.match(k)))
        return [value for _, value in found]


def read_query_request(environ: dict) -> QueryRequest:
    """Parse the request without consuming it: the body is put back for moto to read again."""
    body = b""
    if environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length:
            body = environ["wsgi.input"].read(length)
            environ["wsgi.input"] = io.BytesIO(body)
    params = dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))
    if environ.get("QUERY_STRING"):
        params.update(parse_qsl(environ["QUERY_STRING"], keep_blank_values=True))

    match = _CREDENTIAL_SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
    access_key, region, service = match.groups() if match else (None, "us-east-1", None)
    return QueryRequest(
        service=service, region=region, access_key=access_key, action=params.get("Action"), params=params
    )


def new_request_id() -> str:
    return str(uuid.uuid4())


def xml_elements(values: dict[str, object]) -> str:
    """Render flat ``<name>value</name>`` children, skipping ``None`` values."""
    parts = []
    for name, value in values.items():
        if value is None:
            continue
        text = str(value).lower() if isinstance(value, bool) else str(value)
        parts.append(f"<{name}>{escape(text)}</{name}>")
    return "".join(parts)


def ec2_response(action: str, inner_xml: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<{action}Response xmlns="{EC2_XMLNS}">'
        f"<requestId>{new_request_id()}</requestId>{inner_xml}</{action}Response>"
    ).encode()


def ec2_error_body(code: str, message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
        f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        f"</Error></Errors><RequestID>{new_request_id()}</RequestID></Response>"
    ).encode()


class Ec2Error(Exception):
    """An EC2 API error the simulator answers itself, in EC2's XML error shape."""

    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status

    def body(self) -> bytes:
        return ec2_error_body(self.code, self.message)


def dry_run_error() -> Ec2Error:
    return Ec2Error("DryRunOperation", "Request would have succeeded, but DryRun flag is set.", 412)
