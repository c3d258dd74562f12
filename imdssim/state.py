"""The simulator's changes, kept across restarts in a JSON-lines file (``--state-file``).

moto keeps everything in memory, so a restarted simulator used to be a different AWS: new instance
ids, every change gone. Two things make a restart the same AWS:

- The demo fleet is built with moto's random generator seeded (``imdssim.seed``), so the same ids
  come back on every start; the seed's own clock values (launch times, changes in flight) count
  from the fleet's first creation, which the file's header records.
- What the API changed afterwards is appended here, one line per change, holding the resulting
  state rather than the request: an instance's metadata options (and whether they wait for the
  next start), an instance started, stopped or terminated, an account/region's defaults, a
  declarative policy set or cleared through the admin endpoint. On start the lines are replayed
  in order onto the fresh fleet, then the file is rewritten with the last line of each thing.

The header also carries a fingerprint of the fleet the lines belong to (a hash of the instance ids
present before replay). A file written for another fleet (an older seed, or a simulator started
without ``--seed-demo``) is set aside as ``<file>.stale`` and a new one begun, never half applied.

Not kept: instances launched after start-up (by RunInstances, or by an Auto Scaling group replacing
an instance terminated under it), tag changes and anything outside the IMDS actions above. Written
by hand because moto's own recorder (``/moto-api/recorder``) records raw HTTP requests, Describe
calls included, replays them to the recorded host and port, and never sees the IMDS actions this
layer answers itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from datetime import UTC, datetime
from pathlib import Path

from moto.ec2.models import ec2_backends

from .ec2_imds import OPTION_ATTRS, ImdsModel, Journal, sim_options

log = logging.getLogger(__name__)

VERSION = 1


class StateFile(Journal):
    """The journal of one simulator: read and compacted by ``restore``, appended to by ``record``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._file = None
        self.header = self._read_header()

    @property
    def created_at(self) -> datetime | None:
        """When the fleet this file belongs to was first created (None: no usable file yet)."""
        if self.header is None:
            return None
        return datetime.fromisoformat(self.header["created_at"])

    # --- reading ------------------------------------------------------------------------------
    def _lines(self) -> list[dict]:
        events = []
        with self.path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    # A line cut short by a killed process: everything before it is whole.
                    log.warning("state file %s: line %d is not JSON, ignored", self.path, number)
        return events

    def _read_header(self) -> dict | None:
        if not self.path.exists():
            return None
        lines = self._lines()
        header = lines[0] if lines else None
        if not header or header.get("kind") != "header" or header.get("version") != VERSION:
            self._set_aside("it has no header this version understands")
            return None
        return header

    def _set_aside(self, why: str) -> None:
        stale = self.path.with_name(self.path.name + ".stale")
        os.replace(self.path, stale)
        log.warning("state file %s set aside as %s: %s; starting afresh", self.path, stale, why)

    # --- start-up -----------------------------------------------------------------------------
    def restore(self, imds: ImdsModel, created_at: datetime) -> int:
        """Replay the file onto the fleet now in moto, compact it, and open it for appending.

        ``created_at`` is when this fleet was created (the header's value on a restart). Returns
        the number of changes replayed.
        """
        instances = _all_instances()
        fingerprint = hashlib.sha256(",".join(sorted(f"{k[0]}/{k[1]}/{k[2]}" for k in instances)).encode()).hexdigest()
        events: list[dict] = []
        if self.header is not None:
            if self.header.get("fleet") == fingerprint:
                events = self._lines()[1:]
            else:
                self._set_aside("it was written for another fleet")
                self.header = None
        if self.header is None:
            self.header = {"kind": "header", "version": VERSION, "fleet": fingerprint,
                           "created_at": created_at.isoformat()}
        kept: dict[tuple, dict] = {}
        for event in events:
            try:
                key = _apply(event, imds, instances)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("state file %s: cannot replay %s (%s), dropped", self.path, event, exc)
                continue
            if key is not None:
                kept.pop(key, None)  # re-inserted last: the compacted file keeps the order of last changes
                kept[key] = event
        self._rewrite([self.header, *kept.values()])
        self._file = self.path.open("a", encoding="utf-8")
        if events:
            log.info("replayed %d changes from %s (%d after compaction)", len(events), self.path, len(kept))
        return len(events)

    def _rewrite(self, lines: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        with temporary.open("w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(line, sort_keys=True) + "\n" for line in lines)
        os.replace(temporary, self.path)

    # --- recording ----------------------------------------------------------------------------
    def record(self, event: dict) -> None:
        line = json.dumps(event, sort_keys=True) + "\n"
        with self._lock:
            if self._file is None:
                raise RuntimeError("StateFile.restore() must run before changes are recorded")
            self._file.write(line)
            # Flushed per change: a killed simulator loses nothing already answered.
            self._file.flush()

    def instance_options(self, account_id: str, region: str, instance) -> None:
        options = sim_options(instance)
        self.record({
            "kind": "instance_options", "account_id": account_id, "region": region, "instance_id": instance.id,
            "options": {name: getattr(options, attr) for name, attr in OPTION_ATTRS.items()},
            "awaiting_start": options.awaiting_start,
        })

    def instance_state(self, account_id: str, region: str, instance) -> None:
        self.record({"kind": "instance_state", "account_id": account_id, "region": region,
                     "instance_id": instance.id, "state": instance.state})

    def defaults(self, account_id: str, region: str, settings: dict) -> None:
        self.record({"kind": "defaults", "account_id": account_id, "region": region, "settings": dict(settings)})

    def policy(self, account_id: str, region: str, message: str | None) -> None:
        self.record({"kind": "policy", "account_id": account_id, "region": region, "message": message})

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def utcnow() -> datetime:
    return datetime.now(UTC)


def _all_instances() -> dict[tuple[str, str, str], object]:
    """Every instance moto holds, by (account, region, instance id)."""
    found = {}
    for account_id, regions in list(ec2_backends.items()):
        for region, backend in list(regions.items()):
            for instance in backend.all_instances():
                found[(account_id, region, instance.id)] = instance
    return found


def _apply(event: dict, imds: ImdsModel, instances: dict) -> tuple | None:
    """Replay one line; returns the key of the thing it set (None: nothing to set any more)."""
    kind, account_id, region = event["kind"], event["account_id"], event["region"]
    if kind == "defaults":
        entry = imds.defaults(account_id, region)
        entry.settings = dict(event["settings"])
        return kind, account_id, region
    if kind == "policy":
        imds.set_policy(account_id, region, event["message"] is not None, event["message"])
        return kind, account_id, region
    instance = instances.get((account_id, region, event["instance_id"]))
    if instance is None:
        return None  # launched after start-up last time: not part of the kept fleet
    key = (kind, account_id, region, instance.id)
    if kind == "instance_options":
        imds.set_instance_options(instance, event["options"], pending=False)
        options = sim_options(instance)
        # A change made while stopped still waits for the next start; any other one has applied.
        options.awaiting_start, options.apply_at = bool(event["awaiting_start"]), None
        return key
    if kind == "instance_state":
        backend = ec2_backends[account_id][region]
        action = {"running": backend.start_instances, "stopped": backend.stop_instances,
                  "terminated": backend.terminate_instances}[event["state"]]
        action([instance.id])
        if event["state"] == "running":
            options = sim_options(instance)
            options.awaiting_start, options.apply_at = False, None
        return key
    raise ValueError(f"unknown kind {kind!r}")
