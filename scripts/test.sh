#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine, then run all of it.
# Idempotent: what is already there is not reinstalled.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ] || need_apt+=(dovecot-imapd)
# Browser tests drive Debian's Chromium through Playwright (no browser download).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
# tests/test_image.py builds and runs the image with podman (scripts/image.sh).
for tool in podman buildah runc mmdebstrap; do
    command -v "$tool" >/dev/null 2>&1 || need_apt+=("$tool")
done
command -v newuidmap >/dev/null 2>&1 || need_apt+=(uidmap)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "test.sh: installing ${need_apt[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq -o DPkg::Lock::Timeout=600 "${need_apt[@]}" >/dev/null
    # The packaged service is not needed (tests run private instances); keep it quiet.
    (service dovecot stop || true) >/dev/null 2>&1
fi

# PostgreSQL on 127.0.0.1:5432 is part of this machine kind; start it if it stopped.
if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
fi

# The exact versions the suite last passed with (scripts/constraints.py writes the file).
python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test]"
python -m ruff check .
python -m mypy triage classifiers  # settings: [tool.mypy] in pyproject.toml
# Four workers on two cores: most tests wait on Dovecot, PostgreSQL, a subprocess or a
# browser rather than the CPU (tests/conftest.py says how tests are grouped and ordered).
exec python -m pytest -q -n "${TRIAGE_TEST_WORKERS:-4}" --dist loadgroup "$@"
