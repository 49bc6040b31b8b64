"""The image's HEALTHCHECK: ``python -m triage.healthcheck`` asks the daemon's ``/healthz``.

It reads the same settings as the daemon (``TRIAGE_*`` variables over
``TRIAGE_CONFIG_FILE``), so it asks the port and address the daemon really listens on,
whatever ``TRIAGE_OPS_PORT`` is. ``TRIAGE_OPS_PORT=0`` turns the ops listener off, and then
there is nothing to ask: the check says so and fails rather than pass without looking
(run such a container with ``--no-healthcheck``). Exit 0 healthy, 1 not; one line of output.
"""

from __future__ import annotations

import sys
import urllib.request

TIMEOUT = 4.0  # under the HEALTHCHECK's --timeout=5s


def healthz_url(ops_host: str, ops_port: int) -> str:
    """Where to ask from inside the container: a wildcard address is asked on loopback."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(ops_host, ops_host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{ops_port}/healthz"


def main() -> int:
    from triage.config import load_settings

    try:
        settings = load_settings()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        print(f"unhealthy: the settings do not load: {str(exc).splitlines()[0]}")
        return 1
    if not settings.ops_port:
        print("unhealthy: TRIAGE_OPS_PORT=0 turns off /healthz, so there is nothing to ask; "
              "set a port, or run the container with --no-healthcheck")
        return 1
    url = healthz_url(settings.ops_host, settings.ops_port)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
            status = resp.status
    except OSError as exc:
        print(f"unhealthy: {url}: {exc}")
        return 1
    print(f"healthy: {url} answered {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
