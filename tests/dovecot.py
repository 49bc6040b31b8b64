"""A private Dovecot 2.3 for tests, as a pytest plugin (``pytest_plugins = ["tests.dovecot"]``).

One server per test session (starting Dovecot costs ~0.3 s); every test gets a fresh user,
so a fresh, empty Maildir, through the ``dovecot`` fixture. The server listens on 127.0.0.1
only, plain IMAP on one free port, IMAPS on another (self-signed certificate; STARTTLS on the
plain port), and leaves the system Dovecot alone (own config, ``base_dir``, ``state_dir``).

Dovecot refuses to run mail processes as root, so the mail files belong to a system user
(``triage-mail``) created here on first use.
"""

from __future__ import annotations

import contextlib
import datetime
import imaplib
import itertools
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.oauthserver import TokenServer

DOVECOT = "/usr/sbin/dovecot"
MAIL_USER = "triage-mail"
PASSWORD = "secret"

_CONFIG = """\
instance_name = triage-test-{tag}
base_dir = {root}/run
state_dir = {root}/state
listen = 127.0.0.1
protocols = imap
ssl = yes
ssl_cert = <{root}/cert.pem
ssl_key = <{root}/key.pem
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_uid = {uid}
mail_gid = {gid}
first_valid_uid = {uid}
last_valid_uid = {uid}
first_valid_gid = {gid}
default_login_user = dovenull
default_internal_user = dovecot
mail_location = maildir:{root}/mail/%u/Maildir
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
mail_max_userip_connections = 1000
imap_max_line_length = 1M
passdb {{
  driver = static
  args = password={password}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""


def _oauth2_config(config: str, root: Path, introspection_url: str, ca_file: Path) -> str:
    """Dovecot 2.3's oauth2 passdb beside the password one. Each passdb names its mechanisms,
    or tokens would be checked against the password and passwords sent to the token server;
    no auth cache and no per-IP failure penalty, so one test's refused token does not slow
    the next login (Dovecot's penalty delays every login from 127.0.0.1 after a failure)."""
    args = root / "dovecot-oauth2.conf.ext"
    # Dovecot's auth process reads it as another user: a copy where it can (pytest's own
    # temporary folders are private to root).
    ca_copy = root / "oauth-ca.pem"
    shutil.copyfile(ca_file, ca_copy)
    ca_copy.chmod(0o644)
    ca_file = ca_copy
    args.write_text(
        f"introspection_url = {introspection_url}\n"
        "introspection_mode = post\n"
        "username_attribute = username\n"
        "active_attribute = active\n"
        "active_value = true\n"
        f"tls_ca_cert_file = {ca_file}\n"
        "timeout_msecs = 5000\n")
    args.chmod(0o644)
    config = config.replace("auth_mechanisms = plain login\n",
                            "auth_mechanisms = plain login xoauth2 oauthbearer\n"
                            "auth_cache_size = 0\n")
    config = config.replace("  driver = static\n  args = password=",
                            "  driver = static\n  mechanisms = plain login\n  args = password=")
    config = config.replace(
        "service anvil {\n  chroot =\n}\n",
        "service anvil {\n  chroot =\n  unix_listener anvil-auth-penalty {\n    mode = 0\n"
        "  }\n}\n")
    config += (f"passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n"
               f"  args = {args}\n}}\n")
    assert "mechanisms = plain login\n" in config and "anvil-auth-penalty" in config
    return config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ensure_mail_user() -> tuple[int, int]:
    """Create the system user owning the mail files, once per machine (idempotent)."""
    try:
        pw = pwd.getpwnam(MAIL_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", MAIL_USER],
            check=False,
            capture_output=True,
        )
        pw = pwd.getpwnam(MAIL_USER)  # another process may have won the race: fine
    return pw.pw_uid, pw.pw_gid


def _self_signed(root: Path) -> None:
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(root / "key.pem"),
            "-out",
            str(root / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid)


class DovecotServer:
    """One running Dovecot; ``start``/``stop``/``restart`` keep the same ports and mail."""

    def __init__(self, root: Path, *, tls: bool = True,
                 oauth2: tuple[str, Path] | None = None) -> None:
        """``tls=False``: no TLS at all, so no STARTTLS offered (a server ``imap://`` must
        refuse). ``oauth2=(introspection URL, CA file)``: XOAUTH2 and OAUTHBEARER logins
        too, each token checked by that endpoint (see ``_oauth2_config``)."""
        self.root = root
        self.host = "127.0.0.1"
        self.port = _free_port()
        self.tls_port = _free_port()
        self.uid, self.gid = _ensure_mail_user()
        self.config = root / "dovecot.conf"
        for sub in ("run", "state", "mail"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        _self_signed(root)
        self.cafile = root / "cert.pem"
        config = _CONFIG.format(
            tag=f"{os.getpid()}{'' if tls else '-notls'}{'-oauth2' if oauth2 else ''}",
            root=root,
            uid=self.uid,
            gid=self.gid,
            password=PASSWORD,
            port=self.port,
            tls_port=self.tls_port,
        )
        if not tls:
            config = config.replace(
                f"ssl = yes\nssl_cert = <{root}/cert.pem\nssl_key = <{root}/key.pem\n",
                "ssl = no\n",
            ).replace(f"port = {self.tls_port}\n    ssl = yes\n", "port = 0\n")
            assert "ssl = yes" not in config
        if oauth2 is not None:
            config = _oauth2_config(config, root, *oauth2)
        self.config.write_text(config)
        # Dovecot's mail processes run as MAIL_USER and must be able to reach the mail folder.
        root.chmod(0o755)
        _chown_tree(root / "mail", self.uid, self.gid)
        self._users = itertools.count(1)

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this server's self-signed certificate."""
        return ssl.create_default_context(cafile=str(self.cafile))

    @property
    def running(self) -> bool:
        return self._accepts()

    def _accepts(self) -> bool:
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex((self.host, self.port)) == 0

    def start(self) -> None:
        # The daemon inherits stdout/stderr: pipes would block run() until it exits.
        subprocess.run(
            [DOVECOT, "-c", str(self.config)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        # The listeners exist before the master writes its pid file; stop() needs both.
        while not (self._accepts() and (self.root / "run" / "master.pid").exists()):
            if time.monotonic() > deadline:
                raise RuntimeError("dovecot did not start: " + self.log_tail())
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the master and drop every open IMAP session, as a crash or reboot would.

        The imap processes of Dovecot 2.3 outlive their master here (``shutdown_clients``
        notwithstanding), so the master's children are collected first and ended by pid.
        """
        pidfile = self.root / "run" / "master.pid"
        pid = int(pidfile.read_text()) if pidfile.exists() else None
        children = _children(pid) if pid is not None else []
        for child in children:  # sessions first: the master would wait for them
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        subprocess.run(
            [DOVECOT, "-c", str(self.config), "stop"],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            alive = pid is not None and _pid_alive(pid)
            if not alive and not self._accepts():
                return
            time.sleep(0.02)
        raise RuntimeError("dovecot did not stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def kick(self, user: str) -> None:
        """End every IMAP session of ``user``, as a server does when its token expires."""
        subprocess.run(["doveadm", "-c", str(self.config), "kick", user], check=True,
                       capture_output=True, timeout=30)

    def new_user(self) -> str:
        return f"user{next(self._users)}"

    def log_tail(self, n: int = 20) -> str:
        log = self.root / "dovecot.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:]) if log.exists() else ""


def _children(parent: int) -> list[int]:
    """Pids whose parent is ``parent`` (from /proc; Linux only, like Dovecot here)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may hold spaces and parentheses
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == parent:
            out.append(int(entry.name))
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class DovecotUser:
    """What a test sees: one user's account on the shared server, and levers on the server."""

    server: DovecotServer
    user: str
    password: str = PASSWORD
    _seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def tls_port(self) -> int:
        return self.server.tls_port

    @property
    def maildir(self) -> Path:
        return self.server.root / "mail" / self.user / "Maildir"

    def ssl_context(self) -> ssl.SSLContext:
        return self.server.ssl_context()

    @contextlib.contextmanager
    def imap(self) -> Iterator[imaplib.IMAP4]:
        """A logged-in stdlib client: the independent party that checks what the code did."""
        conn = imaplib.IMAP4(self.host, self.port, timeout=30)
        try:
            conn.login(self.user, self.password)
            yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.logout()

    def append(
        self, raw: bytes, folder: str = "INBOX", when: datetime.datetime | None = None
    ) -> None:
        """A real IMAP APPEND (creates the folder when it is missing)."""
        with self.imap() as conn:
            if folder != "INBOX":
                conn.create(folder)  # NO when it exists; harmless
            date = imaplib.Time2Internaldate(when) if when is not None else None
            typ, data = conn.append(folder, None, date, raw)
            if typ != "OK":
                raise RuntimeError(f"APPEND failed: {data!r}")

    def deliver_files(self, messages: list[bytes], folder: str = "INBOX") -> list[str]:
        """Write messages straight into ``Maildir/new`` (~10x faster than APPEND).

        Names sort in delivery order (Dovecot gives new files UIDs in name order); the
        returned list holds the unique names.
        """
        base = self.maildir if folder == "INBOX" else self.maildir / f".{folder}"
        for sub in ("new", "cur", "tmp"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        _chown_tree(self.maildir.parent, self.server.uid, self.server.gid)
        now = int(time.time())
        names = []
        for raw in messages:
            name = f"{now}.M{next(self._seq):08d}P{os.getpid()}.triage-test"
            tmp = base / "tmp" / name
            tmp.write_bytes(raw)
            os.chown(tmp, self.server.uid, self.server.gid)
            os.rename(tmp, base / "new" / name)
            names.append(name)
        return names

    def uidvalidity(self, folder: str = "INBOX") -> int:
        with self.imap() as conn:
            typ, data = conn.status(folder, "(UIDVALIDITY)")
            assert typ == "OK", data
            text = data[0].decode() if isinstance(data[0], bytes) else str(data[0])
            return int(text.rsplit("UIDVALIDITY", 1)[1].strip(" )"))

    def change_uidvalidity(self, folder: str = "INBOX") -> int:
        """Make the folder's UIDVALIDITY change, keeping its messages; returns the new value.

        Dovecot keeps UIDs in ``dovecot-uidlist`` and a copy in its index; removing both
        makes it renumber, but a regenerated UIDVALIDITY is the current time, which can equal
        the old one within the same second. So the uidlist is rewritten with old + 1 and no
        entries: every file then gets a new UID under the new UIDVALIDITY. Dovecot drops any
        session that has the folder open (its index log no longer matches), as a real
        server whose mail store was rebuilt would.
        """
        old = self.uidvalidity(folder)
        base = self.maildir if folder == "INBOX" else self.maildir / f".{folder}"
        for p in base.iterdir():
            if p.name.startswith("dovecot.index") or p.name == "dovecot-uidlist":
                p.unlink()
        uidlist = base / "dovecot-uidlist"
        uidlist.write_text(f"3 V{old + 1} N1\n")
        os.chown(uidlist, self.server.uid, self.server.gid)
        new = self.uidvalidity(folder)
        assert new != old, (old, new)
        return new

    def restart(self) -> None:
        self.server.restart()

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()


def _session_server(prefix: str, **options: Any) -> Iterator[DovecotServer]:
    """A private Dovecot for the test session, in a folder of its own, stopped and removed
    after."""
    if not os.path.exists(DOVECOT):
        pytest.skip(f"{DOVECOT} is missing (apt-get install dovecot-imapd)")
    root = Path(tempfile.mkdtemp(prefix=prefix))
    server = DovecotServer(root, **options)
    server.start()
    try:
        yield server
    finally:
        if server.running:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def dovecot_server() -> Iterator[DovecotServer]:
    yield from _session_server("triage-dovecot-")


@pytest.fixture(scope="session")
def dovecot_without_tls() -> Iterator[DovecotUser]:
    """A second Dovecot that offers no STARTTLS (``ssl = no``), with one user."""
    for server in _session_server("triage-dovecot-notls-", tls=False):
        yield DovecotUser(server, server.new_user())


@pytest.fixture(scope="session")
def dovecot_oauth_server(token_server: TokenServer) -> Iterator[DovecotServer]:
    """A Dovecot that also takes XOAUTH2, checking tokens with the session's token server
    (tests.oauthserver must be a plugin too)."""
    yield from _session_server("triage-dovecot-oauth2-", oauth2=(
        token_server.introspection_url, token_server.ca.ca))


def fresh_user(server: DovecotServer) -> Iterator[DovecotUser]:
    """A new user with an empty INBOX on ``server`` (started if a test stopped it), its mail
    removed after; the server runs again after."""
    if not server.running:
        server.start()
    user = DovecotUser(server, server.new_user())
    yield user
    if not server.running:
        server.start()
    shutil.rmtree(user.maildir.parent, ignore_errors=True)


@pytest.fixture
def dovecot_oauth(dovecot_oauth_server: DovecotServer) -> Iterator[DovecotUser]:
    """A fresh user on the XOAUTH2 Dovecot; its password login works too (for checking)."""
    yield from fresh_user(dovecot_oauth_server)


@pytest.fixture
def dovecot(dovecot_server: DovecotServer) -> Iterator[DovecotUser]:
    """A fresh user with an empty INBOX on the shared server; the server runs again after."""
    yield from fresh_user(dovecot_server)
