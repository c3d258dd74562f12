"""Command line entry point: ``python -m imdssim --port 5000 [--seed-demo] ...``."""

from __future__ import annotations

import argparse
import logging
import random
import signal
import sys

log = logging.getLogger("imdssim")


def _rate(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m imdssim",
        description="Simulated AWS endpoint (moto) with real EC2 IMDS semantics, for imdsweb dev and tests.",
    )
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on (0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument(
        "--seed-demo", action="store_true", help="create the demo fleet (3 accounts, ~1,500 instances)"
    )
    parser.add_argument(
        "--seed-org",
        type=int,
        default=0,
        metavar="N",
        help="create an AWS Organization of N member accounts (at least 4) in nested OUs",
    )
    parser.add_argument(
        "--org-instances",
        type=int,
        default=3,
        metavar="K",
        help="instances per region in each readable organization account (default: %(default)s)",
    )
    parser.add_argument(
        "--apply-delay",
        type=_non_negative,
        default=3.0,
        help="seconds a metadata options change stays pending (default: %(default)s)",
    )
    parser.add_argument(
        "--no-throttle",
        dest="throttle",
        action="store_false",
        help="turn off the EC2 token-bucket throttling",
    )
    parser.add_argument(
        "--time-scale",
        type=_positive,
        default=1.0,
        help="refill throttle buckets this many times faster (default: %(default)s)",
    )
    parser.add_argument(
        "--throttle-rate",
        type=_rate,
        default=0.0,
        help="share of EC2 calls failing at random with RequestLimitExceeded",
    )
    parser.add_argument(
        "--error-rate",
        type=_rate,
        default=0.0,
        help="share of EC2 calls failing at random with InternalError (HTTP 500)",
    )
    parser.add_argument(
        "--latency-ms", type=_non_negative, default=0.0, help="latency added to each EC2 call"
    )
    parser.add_argument(
        "--random-seed",
        type=int,
        default=None,
        help="seed for the fault injection dice (the demo fleet is always the same)",
    )
    parser.add_argument(
        "--state-file",
        default=None,
        help="keep the simulator's changes in this file and replay them on the next start "
        "(JSON lines; the demo uses var/imdssim-state.jsonl)",
    )
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Imported after parsing: moto takes seconds to import, and --help or a bad flag should not wait.
    from .seed import DEMO_ACCOUNTS, seed_demo_fleet
    from .server import SimulatorApp, make_simulator_server
    from .state import StateFile, utcnow
    from .throttle import Knobs

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One access-log line per AWS call drowns everything else during benchmarks.
    logging.getLogger("werkzeug").setLevel(logging.DEBUG if args.log_level == "DEBUG" else logging.WARNING)

    knobs = Knobs(
        apply_delay=args.apply_delay,
        throttle=args.throttle,
        time_scale=args.time_scale,
        throttle_rate=args.throttle_rate,
        error_rate=args.error_rate,
        latency_ms=args.latency_ms,
    )
    app = SimulatorApp(knobs, rng=random.Random(args.random_seed))
    state = StateFile(args.state_file) if args.state_file else None
    # A restart keeps the first start's clock: launch times and in-flight changes stay put.
    created_at = (state.created_at if state else None) or utcnow()
    if args.seed_demo:
        app.demo_accounts = seed_demo_fleet(app.imds, created_at)
        app.role_external_ids = {a.role_arn: a.external_id for a in DEMO_ACCOUNTS if a.external_id}
        for account in app.demo_accounts:
            external = f" ExternalId={account['external_id']}" if account["external_id"] else ""
            print(
                f"demo account {account['account_id']} {account['name']}: {account['role_arn']}{external} "
                f"regions={','.join(account['regions'])}",
                flush=True,
            )

    if state is not None:
        replayed = state.restore(app.imds, created_at)
        app.imds.journal = state
        print(f"state file {state.path}: {replayed} change{'' if replayed == 1 else 's'} replayed", flush=True)
    if args.seed_org:
        from .organization import seed_organization

        if args.seed_org < 4:
            print("--seed-org needs at least 4 accounts", file=sys.stderr)
            return 2
        app.organization = seed_organization(app.org, app.imds, args.seed_org, args.org_instances)
        print(
            f"organization: management account {app.organization['management_account_id']} "
            f"({app.organization['management_role_arn']}), {args.seed_org} member accounts",
            flush=True,
        )

    server = make_simulator_server(app, args.host, args.port)
    # SIGTERM (SimulatorProcess.stop, docker stop) should end the process as cleanly as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    host, port = server.server_address[:2]
    print(f"imdssim listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()
        if state is not None:
            state.close()
        log.info("imdssim stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
