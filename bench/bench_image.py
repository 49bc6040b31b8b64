"""The image's start-up and stop, and what its compiled bytecode saves (issue 16).

    python bench/bench_image.py [--runs 5] [--image TAG]

Builds the image with scripts/image.sh unless --image names one already built, then:
- start-up: ``podman run -d`` until ``/healthz`` answers 200 (migrations of a fresh SQLite
  database, the ingest worker's start, the web app), and ``podman stop`` of the running
  daemon, each ``--runs`` times (a fresh var/ folder each time);
- imports in the image: the daemon's modules (``triage.service``, ``triage.web.app``) and
  the ingest worker's (``triage.ingest``, ``classifiers.scorer``, numpy), each in a fresh
  interpreter, with the bytecode compiled at build and without it (a pycache prefix
  that holds nothing: what every start paid when the build deleted ``__pycache__``).
Prints one JSON object; medians and ranges in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "CONTAINERS_CONF": str(ROOT / "scripts" / "podman" / "containers.conf")}
UID = 10001

IMPORTS = {
    "daemon": "import triage.service, triage.web.app",
    "ingest_worker": "import triage.ingest, classifiers.scorer, numpy",
}
# One fresh interpreter per sample; the figure is the interpreter's whole run.
TIMER = """
import subprocess, sys, time, json
out = {}
for name, stmt in json.loads(sys.argv[1]).items():
    for mode, extra in (("bytecode", []), ("no_bytecode", ["-X", "pycache_prefix=/tmp/none"])):
        samples = []
        for _ in range(int(sys.argv[2])):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-B", *extra, "-c", stmt], check=True)
            samples.append(time.perf_counter() - t)
        out[f"{name}_{mode}"] = samples
print(json.dumps(out))
"""


def podman(*args: str, timeout: float = 300) -> str:
    r = subprocess.run(["podman", *args], env=ENV, capture_output=True, text=True,
                       timeout=timeout, check=True)
    return r.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def summary(samples: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(samples), 3), "min": round(min(samples), 3),
            "max": round(max(samples), 3)}


def start_stop(image: str, runs: int) -> tuple[list[float], list[float]]:
    starts, stops = [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            inbox, var = Path(tmp) / "inbox", Path(tmp) / "var"
            for d in (inbox / "new", inbox / "cur", inbox / "tmp", var):
                d.mkdir(parents=True)
            for d in (inbox, inbox / "new", inbox / "cur", inbox / "tmp", var):
                os.chown(d, UID, UID)
            port = free_port()
            t0 = time.perf_counter()
            name = podman("run", "-d", "--network", "host", "--no-healthcheck",
                          "-e", "TRIAGE_MAILBOX_URL=maildir:///mail/inbox",
                          "-e", f"TRIAGE_OPS_PORT={port}", "-v", f"{inbox}:/mail/inbox",
                          "-v", f"{var}:/app/var", image).strip()
            try:
                deadline = t0 + 120
                while True:
                    try:
                        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz",
                                                    timeout=2):
                            break
                    except OSError:
                        if time.perf_counter() > deadline:
                            raise
                        time.sleep(0.05)
                starts.append(time.perf_counter() - t0)
                t1 = time.perf_counter()
                podman("stop", "-t", "10", name)
                stops.append(time.perf_counter() - t1)
                code = podman("inspect", name, "--format", "{{.State.ExitCode}}").strip()
                assert code == "0", f"exit {code}"
            finally:
                podman("rm", "-f", "-t", "0", name)
    return starts, stops


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--image", help="an image already built (default: build one)")
    ns = ap.parse_args()
    image = ns.image or "localhost/itx-triage:bench"
    build_s = None
    if not ns.image:
        t = time.perf_counter()
        subprocess.run([str(ROOT / "scripts" / "image.sh"), image], env=ENV, check=True,
                       capture_output=True)
        build_s = round(time.perf_counter() - t, 1)
    starts, stops = start_stop(image, ns.runs)
    imports = json.loads(podman("run", "--rm", "--network", "host", "--no-healthcheck",
                                "--entrypoint", "python", image, "-c", TIMER,
                                json.dumps(IMPORTS), str(ns.runs)))
    size = podman("image", "inspect", image, "--format", "{{.Size}}").strip()
    print(json.dumps({
        "image": image, "size_mb": round(int(size) / 1e6), "build_s": build_s,
        "start_to_healthz_s": summary(starts), "stop_s": summary(stops),
        "imports_s": {k: summary(v) for k, v in imports.items()},
        "runs": ns.runs,
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
