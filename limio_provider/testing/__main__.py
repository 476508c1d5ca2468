"""``limio-emulator`` / ``python -m limio_provider.testing``: run a Limio emulator until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from limio_provider.testing.emulator import PARTNERS, LimioEmulator, load_catalogue


def _parser() -> argparse.ArgumentParser:
    """The command line options."""
    parser = argparse.ArgumentParser(prog="limio-emulator", description="Run a local Limio Orders API.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port; 0 picks a free one (default 8080)")
    parser.add_argument("--client-id", default="emulator-client", help="OAuth client id to accept")
    parser.add_argument("--client-secret", default="emulator-secret", help="OAuth client secret to accept")
    parser.add_argument("--admin-client-id", default="emulator-admin", help="management client id (/admin/order)")
    parser.add_argument("--admin-client-secret", default="emulator-admin-secret", help="management client secret")
    parser.add_argument(
        "--catalogue", metavar="FILE", help="JSON file of the offers to know, instead of the built-in catalogue"
    )
    parser.add_argument(
        "--partner",
        action="append",
        metavar="ID",
        help=f"partner organisation id /admin/order may name; repeatable (default: {', '.join(PARTNERS)})",
    )
    parser.add_argument(
        "--lenient",
        action="store_true",
        help="accept /admin/order with any client, offers outside the catalogue and any partner",
    )
    parser.add_argument("--token-ttl", type=float, default=3600.0, help="token lifetime in s (default 3600)")
    parser.add_argument(
        "--processing-delay", type=float, default=0.0, help="seconds async orders stay submitted (default 0)"
    )
    parser.add_argument(
        "--decline-payment-ref",
        action="append",
        default=[],
        metavar="REF",
        help="payment refId (or payment type) whose orders fail; repeatable",
    )
    parser.add_argument(
        "--rate-limit",
        type=float,
        metavar="N",
        help="answer 429 beyond N API requests a second (a token bucket of N; emulator behaviour)",
    )
    parser.add_argument(
        "--rate-limit-burst", type=float, metavar="B", help="with --rate-limit: the bucket's size (default N)"
    )
    parser.add_argument(
        "--no-retry-after", action="store_true", help="with --rate-limit: answer 429 without a Retry-After header"
    )
    parser.add_argument(
        "--tls", action="store_true", help="serve HTTPS with a fresh self-signed certificate (needs cryptography)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Start the emulator, print the Airflow connection to use, and serve until SIGINT/SIGTERM."""
    args = _parser().parse_args(argv)
    try:
        catalogue = load_catalogue(args.catalogue) if args.catalogue else None
    except (OSError, ValueError) as error:
        print(f"limio-emulator: cannot load the catalogue: {error}", file=sys.stderr)
        return 2
    emulator = LimioEmulator(
        host=args.host,
        port=args.port,
        client_id=args.client_id,
        client_secret=args.client_secret,
        token_ttl=args.token_ttl,
        processing_delay=args.processing_delay,
        decline_payment_refs=args.decline_payment_ref,
        tls=args.tls,
        admin_client_id=args.admin_client_id,
        admin_client_secret=args.admin_client_secret,
        catalogue=catalogue,
        partners=args.partner or PARTNERS,
        lenient=args.lenient,
    )
    if args.rate_limit is not None:
        try:
            emulator.set_rate_limit(args.rate_limit, args.rate_limit_burst, retry_after=not args.no_retry_after)
        except ValueError as error:
            print(f"limio-emulator: --rate-limit: {error}", file=sys.stderr)
            return 2
    stopped = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopped.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    try:
        emulator.start()
    except OSError as error:  # e.g. the port is taken
        print(f"limio-emulator: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1
    try:
        print(f"Limio emulator listening on {emulator.url}", flush=True)
        if emulator.ca_path:
            print(f"Its self-signed TLS certificate (curl --cacert ...): {emulator.ca_path}", flush=True)
        print("Point Airflow at it with:", flush=True)
        for name, value in emulator.connection_env().items():
            print(f"export {name}={shlex.quote(value)}", flush=True)
        print("Press Ctrl+C to stop.", flush=True)
        stopped.wait()
    finally:
        emulator.stop()
    print("Limio emulator stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
