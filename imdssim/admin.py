"""The simulator's own HTTP endpoint under ``/_imdssim/``.

Lets tests, benchmarks and demo operators read and change the knobs at runtime, mark an
account/region as managed by a declarative policy, read and reset call statistics, wait for
readiness and discover the seeded demo accounts; read the seeded organization, opt an account in
or out of a region and make an account's role missing or read-only; give instances an IMDSv1
workload (imdssim.workloads). JSON in, JSON out; nothing here is AWS-shaped.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from werkzeug.exceptions import BadRequest, HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

if TYPE_CHECKING:
    from .server import SimulatorApp

log = logging.getLogger(__name__)
PREFIX = "/_imdssim"

_routes = Map(
    [
        Rule(f"{PREFIX}/health", endpoint="health", methods=["GET"]),
        Rule(f"{PREFIX}/config", endpoint="get_config", methods=["GET"]),
        Rule(f"{PREFIX}/config", endpoint="set_config", methods=["POST"]),
        Rule(f"{PREFIX}/policy", endpoint="set_policy", methods=["POST"]),
        Rule(f"{PREFIX}/omit", endpoint="omit_options", methods=["POST"]),
        Rule(f"{PREFIX}/stats", endpoint="stats", methods=["GET"]),
        Rule(f"{PREFIX}/stats/reset", endpoint="reset_stats", methods=["POST"]),
        Rule(f"{PREFIX}/demo", endpoint="demo", methods=["GET"]),
        Rule(f"{PREFIX}/organization", endpoint="organization", methods=["GET"]),
        Rule(f"{PREFIX}/regions", endpoint="set_region", methods=["POST"]),
        Rule(f"{PREFIX}/role", endpoint="set_role", methods=["POST"]),
        Rule(f"{PREFIX}/workload", endpoint="get_workloads", methods=["GET"]),
        Rule(f"{PREFIX}/workload", endpoint="set_workload", methods=["POST"]),
    ]
)


def _json(data: object, status: int = 200) -> Response:
    return Response(json.dumps(data, indent=2, sort_keys=True), status=status, mimetype="application/json")


def _json_body(request: Request) -> dict:
    try:
        body = json.loads(request.get_data(as_text=True) or "{}")
    except json.JSONDecodeError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


class AdminEndpoint:
    def __init__(self, sim: SimulatorApp):
        self.sim = sim

    def __call__(self, environ, start_response):
        request = Request(environ)
        try:
            endpoint, _ = _routes.bind_to_environ(environ).match()
            response = getattr(self, endpoint)(request)
        except (NotFound, MethodNotAllowed, BadRequest) as exc:
            response = _json({"error": exc.description}, exc.code)
        except HTTPException as exc:  # pragma: no cover - other werkzeug errors keep their own page
            response = exc.get_response(environ)
        return response(environ, start_response)

    def health(self, request: Request) -> Response:
        return _json({"status": "ok"})

    def get_config(self, request: Request) -> Response:
        return _json(self.sim.knobs.as_dict())

    def set_config(self, request: Request) -> Response:
        changes = _json_body(request)
        try:
            self.sim.knobs.update(changes)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        log.info("knobs changed: %s", changes)
        return _json(self.sim.knobs.as_dict())

    def set_policy(self, request: Request) -> Response:
        body = _json_body(request)
        account_id, region = body.get("account_id"), body.get("region")
        if not isinstance(account_id, str) or not isinstance(region, str):
            raise BadRequest("account_id and region are required strings")
        managed = body.get("managed", True)
        if not isinstance(managed, bool):
            raise BadRequest("managed must be true or false")
        message = body.get("message")
        if message is not None and not isinstance(message, str):
            raise BadRequest("message must be a string")
        self.sim.imds.set_policy(account_id, region, managed, message)
        entry = self.sim.imds.defaults(account_id, region)
        return _json(
            {"account_id": account_id, "region": region, "managed": managed, "message": entry.policy_message}
        )

    def omit_options(self, request: Request) -> Response:
        body = _json_body(request)
        account_id, region = body.get("account_id"), body.get("region")
        instance_ids, members = body.get("instance_ids"), body.get("members")
        if not isinstance(account_id, str) or not isinstance(region, str):
            raise BadRequest("account_id and region are required strings")
        for name, value in (("instance_ids", instance_ids), ("members", members)):
            if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
                raise BadRequest(f"{name} must be a non-empty list of strings")
        try:
            self.sim.imds.omit_options(account_id, region, instance_ids, members)
        except KeyError as exc:
            raise BadRequest(exc.args[0]) from None
        log.info("%s/%s: MetadataOptions of %d instance(s) omit %s", account_id, region, len(instance_ids), members)
        return _json({"account_id": account_id, "region": region, "instance_ids": instance_ids, "members": members})

    def get_workloads(self, request: Request) -> Response:
        return _json(self.sim.workloads.as_list())

    def set_workload(self, request: Request) -> Response:
        body = _json_body(request)
        account_id, region, instance_ids = body.get("account_id"), body.get("region"), body.get("instance_ids")
        rate = body.get("calls_per_minute", 60)
        if not isinstance(account_id, str) or not isinstance(region, str):
            raise BadRequest("account_id and region are required strings")
        if not isinstance(instance_ids, list) or not instance_ids or not all(isinstance(i, str) for i in instance_ids):
            raise BadRequest("instance_ids must be a non-empty list of strings")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate < 0:
            raise BadRequest("calls_per_minute must be a number >= 0 (0 removes the workload)")
        try:
            self.sim.workloads.set(account_id, region, instance_ids, float(rate))
        except KeyError as exc:
            raise BadRequest(exc.args[0]) from None
        log.info("%s/%s: IMDSv1 workload of %s call(s)/min on %s", account_id, region, rate, instance_ids)
        return _json({"account_id": account_id, "region": region, "instance_ids": instance_ids,
                      "calls_per_minute": rate})

    def stats(self, request: Request) -> Response:
        return _json(self.sim.stats.snapshot())

    def reset_stats(self, request: Request) -> Response:
        # Buckets are refilled too, so each measurement starts from the same throttling state.
        self.sim.stats.reset()
        self.sim.throttler.reset()
        return _json(self.sim.stats.snapshot())

    def demo(self, request: Request) -> Response:
        return _json(self.sim.demo_accounts)

    def organization(self, request: Request) -> Response:
        return _json(self.sim.organization)

    def set_region(self, request: Request) -> Response:
        body = _json_body(request)
        account_id, region, opted_in = body.get("account_id"), body.get("region"), body.get("opted_in", True)
        if not isinstance(account_id, str) or not isinstance(region, str) or not isinstance(opted_in, bool):
            raise BadRequest("account_id and region (strings) and opted_in (true or false) are required")
        try:
            self.sim.org.set_region(account_id, region, opted_in)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        return _json({"account_id": account_id, "opted_in_regions": sorted(self.sim.org.opted_in(account_id))})

    def set_role(self, request: Request) -> Response:
        body = _json_body(request)
        account_id, access = body.get("account_id"), body.get("access")
        if not isinstance(account_id, str) or not isinstance(access, str):
            raise BadRequest("account_id and access are required strings")
        try:
            self.sim.org.set_role_access(account_id, access)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        return _json({"account_id": account_id, "access": self.sim.org.role_access(account_id)})
