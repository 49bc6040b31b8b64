"""What a failed command tells its operator: one line on stderr and an exit code.

::

    Exception
     +-- ConfigError (ValueError)   a setting is wrong, found before anything is touched: exit 2
     +-- RunFailure                 a server or file refused us at run time: exit 1
     +-- SlaPolicyError             the policy file (triage.sla): exit 2
     +-- sqlalchemy DBAPIError      the database refused or is unreachable: exit 1
     +-- anything else              a bug or an unforeseen failure: exit 1

Exit 2 means "retrying will not help until a setting changes"; it is decided from the
settings alone. Exit 1 means something was tried and failed. Every line names the setting
to look at and what to do; the traceback is printed only with ``--debug`` or
``TRIAGE_LOG_LEVEL=DEBUG``. This module imports nothing heavy: the CLI uses it for every
command, ``triage sla due`` included.
"""

from __future__ import annotations

import sys

BAD_CONFIGURATION = 2
RUNTIME_FAILURE = 1


class ConfigError(ValueError):
    """A setting is wrong. ``str()`` is one line naming the setting and what to do."""


class RunFailure(Exception):
    """A server or file refused us at run time. ``str()`` names the setting involved."""


def database_failure(exc: BaseException) -> str:
    """One line for a database that refused us: the server's own first line (it names the
    host and port, never the password) and the likely fix."""
    orig = getattr(exc, "orig", None) or exc
    text = " ".join(str(orig).split("\n")[0].split())
    for prefix in ("connection failed: ", "FATAL: "):
        text = text.replace(prefix, "")
    low = text.lower()
    if "database" in low and "does not exist" in low:
        hint = "create it (createdb) or fix the database name"
    elif "role" in low and "does not exist" in low:
        hint = "create the role (createuser) or fix the user name"
    elif "password authentication failed" in low or "no password supplied" in low:
        hint = "fix the user or password in the URL"
    elif "refused" in low or "timeout" in low or "timed out" in low or "resolve" in low:
        hint = "is the database server running and reachable at that address?"
    elif "unable to open database file" in low:
        hint = "check that the folder exists and is writable"
    else:
        hint = "check the URL and the database server"
    return f"TRIAGE_DATABASE_URL: {text}: {hint}"


def _is_database_error(exc: BaseException) -> bool:
    mod = sys.modules.get("sqlalchemy.exc")
    return mod is not None and isinstance(exc, mod.DBAPIError)


def _is_policy_error(exc: BaseException) -> bool:
    mod = sys.modules.get("triage.sla")
    return mod is not None and isinstance(exc, mod.SlaPolicyError)


def describe(exc: BaseException) -> tuple[int, str]:
    """The exit code and the one line for ``exc``."""
    if isinstance(exc, ConfigError):
        return BAD_CONFIGURATION, str(exc)
    if _is_policy_error(exc):
        return BAD_CONFIGURATION, f"TRIAGE_SLA_POLICY_PATH: {exc}: fix the policy file"
    if isinstance(exc, RunFailure):
        return RUNTIME_FAILURE, str(exc)
    if _is_database_error(exc):
        return RUNTIME_FAILURE, database_failure(exc)
    first = (str(exc).strip().splitlines() or [""])[0]
    return RUNTIME_FAILURE, (f"{type(exc).__name__}: {first} (unexpected: --debug prints the "
                             "traceback; please report it)")
