"""Browser-test support: a seeded staff web app on a real port, and Debian's Chromium.

The database is filled the way production fills it: the sample mail (and any extra raw
messages) is written to a Maildir and ingested by ``Service.run_once`` (parse, screen,
classify, open work orders, write acknowledgments to a folder transport), so the pages show
the classifier's real decisions. The app is served by ``triage.web.ops.serve``, as the
daemon serves it, in a thread with its own event loop: Playwright's sync API and
pytest-asyncio's loop stay apart.

A pytest plugin, loaded by ``tests/conftest.py``. Fixtures: ``site`` (module scope: seeded
database, server on 127.0.0.1 and a free port; a module with other mail defines its own
from ``running_site``), ``browser`` (module scope), and pages each in a fresh context (no
cookies carried over): ``page``, ``second`` (another technician's) and ``no_script``
(JavaScript off). ``scripts/screenshots.py`` uses the same helpers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import email
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email import policy as email_policy
from email.headerregistry import Address
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright
from sqlalchemy import select
from starlette.applications import Starlette

from triage.config import DATA_DIR, Settings
from triage.desk import users
from triage.desk.sent import SentAcks
from triage.storage.models import Message, WorkOrder
from triage.web.app import WebDeps, create_web_app
from triage.web.ops import serve
from triage.wiring import Components, build, utcnow

CHROMIUM = Path(os.environ.get("TRIAGE_TEST_CHROMIUM", "/usr/bin/chromium"))
# The flags TESTING-NOTES.md lists for this machine kind (root, no GPU, no background traffic).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]

STAFF = "alice"
STAFF_PASSWORD = "correct horse battery"
STAFF_DISPLAY = "Alice Moreno"
OTHER_STAFF = ("ben", "another long password", "Ben Okafor")

XSS_MESSAGE_ID = "xss-1@evilcorp.example"
XSS_SUBJECT = ("<script>window.__xss=1;alert('subject')</script> printer "
               "<img src=x onerror=alert('subject-img')> not printing")
XSS_SENDER_NAME = "<img src=x onerror=alert('from')> Mallory"
XSS_TEXT = ("Our front desk printer stopped printing.\n"
            "<script>window.__xss=1;alert('text')</script>\n"
            "<svg onload=\"window.__xss=1;alert('text-svg')\">\n"
            "<a href=\"javascript:alert('text-link')\">help</a>\n")
XSS_HTML = (
    "<p>Printer broken since <b>Monday</b>.</p>"
    "<script>window.__xss=1;alert('html-script')</script>"
    "<img src=x onerror=\"window.__xss=1;alert('html-img')\">"
    "<a id=js href=\"javascript:window.__xss=1;alert('html-link')\">click me</a>"
    "<svg onload=\"window.__xss=1;alert('html-svg')\"></svg>"
    "<iframe src=\"javascript:alert('html-iframe')\"></iframe>"
    "<div style=\"background:url(javascript:alert('html-style'))\">styled</div>"
    "<a id=ok href=\"https://itx.net/\" onclick=\"window.__xss=1;alert('html-onclick')\">"
    "ok link</a>"
    "<form action=\"javascript:alert('html-form')\"><button>go</button></form>"
    "<math><mtext><table><mglyph><style><img src=x onerror=alert('mxss')></style>"
    "</mglyph></table></mtext></math>"
)
XSS_FILENAME = "\"><img src=x onerror=alert('file')>.pdf"


def xss_email() -> bytes:
    """A request whose every client-controlled field carries a script payload."""
    m = EmailMessage(policy=email_policy.SMTP)
    m["From"] = Address(display_name=XSS_SENDER_NAME, addr_spec="mallory@evilcorp.example")
    m["To"] = "helpdesk@itx.net"
    m["Subject"] = XSS_SUBJECT
    m["Message-ID"] = f"<{XSS_MESSAGE_ID}>"
    m["Date"] = "Wed, 25 Nov 2026 10:00:00 -0500"
    m.set_content(XSS_TEXT)
    m.add_alternative(XSS_HTML, subtype="html")
    m.add_attachment(b"%PDF-1.4\n% not really a PDF\n", maintype="application", subtype="pdf",
                     filename=XSS_FILENAME)
    return m.as_bytes()


class SeedClock:
    """The app's clock: pinned to each arrival while the mail is ingested (so the
    acknowledgment goes out a minute after the mail came in, as in a running daemon), then
    ``base`` (the real time, or a moving clock for the screenshots)."""

    def __init__(self, base: Callable[[], datetime]) -> None:
        self.base = base
        self.pinned: datetime | None = None

    def __call__(self) -> datetime:
        return self.pinned if self.pinned is not None else self.base()


def seed(root: Path, *, extra: Sequence[bytes] = (), spacing: float = 1800.0,
         clock: Callable[[], datetime] = utcnow,
         samples: Sequence[Path] | None = None,
         database_url: str | None = None) -> tuple[Settings, Components]:
    """Ingest the sample mail (then ``extra``) through the real pipeline into a new SQLite
    database under ``root`` (or the empty database at ``database_url``), one message at a
    time; arrivals are ``spacing`` seconds apart, the last a minute before ``clock()``. Adds
    the staff users."""
    inbox = root / "inbox"
    for sub in ("new", "cur", "tmp"):
        (inbox / sub).mkdir(parents=True, exist_ok=True)
    files = list(samples if samples is not None else sorted((DATA_DIR / "samples").glob("*.eml")))
    raws = [f.read_bytes() for f in files] + list(extra)
    settings = Settings(database_url=database_url or f"sqlite:///{root / 'triage.db'}",
                        mailbox_url=f"maildir://{inbox}", smtp_url=f"dir://{root / 'outbox'}",
                        attachments_dir=root / "attachments", ops_port=0, log_format="text",
                        ingest_worker="thread")  # the seed clock must reach ingestion
    seed_clock = SeedClock(clock)
    components = build(settings, clock=seed_clock)
    last = clock() - timedelta(minutes=1)

    async def deliver_all() -> None:
        # The daemon's own loop body (fetch, store, mark, send), one arrival at a time.
        runner = components.runner
        async with components.transport:
            await runner.mailbox.connect()
            try:
                for i, raw in enumerate(raws):
                    arrival = last - timedelta(seconds=(len(raws) - 1 - i) * spacing)
                    name = f"{int(arrival.timestamp())}.seed{i:04d}.itx-triage"
                    (inbox / "tmp" / name).write_bytes(raw)
                    (inbox / "tmp" / name).rename(inbox / "new" / name)
                    os.utime(inbox / "new" / name, (arrival.timestamp(),) * 2)  # arrival time
                    seed_clock.pinned = arrival + timedelta(seconds=40)
                    await runner.process_waiting()
                    while True:
                        sent, failed = await runner.sender.drain()
                        if failed or not sent:
                            break
            finally:
                await runner.mailbox.close()

    try:
        asyncio.run(deliver_all())
    finally:
        seed_clock.pinned = None
    with components.sessions.begin() as s:
        users.add_user(s, STAFF, STAFF_PASSWORD, display_name=STAFF_DISPLAY)
        users.add_user(s, OTHER_STAFF[0], OTHER_STAFF[1], display_name=OTHER_STAFF[2])
    return settings, components


class ServerThread:
    """The web app on 127.0.0.1 and a free port, served by ``triage.web.ops.serve`` in a
    thread with its own event loop (as the daemon serves it, and apart from the test's loop)."""

    def __init__(self, app: Starlette) -> None:
        self._app = app
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._port: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="web-app", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # raised again by start() or stop()
            self._error = e
            if not self._port.done():
                self._port.set_exception(e)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        bound: asyncio.Future[int] = self._loop.create_future()
        task = asyncio.create_task(
            serve(self._app, "127.0.0.1", 0, self._stop, bound=bound))
        done, _ = await asyncio.wait({task, bound}, return_when=asyncio.FIRST_COMPLETED)
        if bound in done:
            self._port.set_result(bound.result())
        await task

    def start(self, timeout: float = 15.0) -> str:
        self._thread.start()
        return f"http://127.0.0.1:{self._port.result(timeout)}"

    def stop(self, timeout: float = 15.0) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError("the web app thread did not stop")
        if self._error is not None:
            raise RuntimeError("the web app server failed") from self._error


@dataclass
class Site:
    base_url: str
    settings: Settings
    c: Components
    cookie_secure: bool

    def url(self, path: str) -> str:
        return self.base_url + path

    def number_of(self, message_id: str) -> str:
        """The work order opened from the message with this Message-ID (no angle brackets)."""
        with self.c.reads() as s:
            number = s.scalar(select(WorkOrder.number)
                              .join(Message, Message.work_order_id == WorkOrder.id)
                              .where(Message.message_id.in_([message_id, f"<{message_id}>"])))
        assert number, f"no work order from {message_id}"
        return number

    def work_order(self, number: str) -> WorkOrder:
        with self.c.reads() as s:
            wo = s.scalar(select(WorkOrder).where(WorkOrder.number == number))
            assert wo is not None
            s.expunge(wo)
            return wo


@contextlib.contextmanager
def running_site(root: Path, *, cookie_secure: bool = True, extra: Sequence[bytes] = (),
                 clock: Callable[[], datetime] = utcnow, spacing: float = 1800.0,
                 samples: Sequence[Path] | None = None,
                 database_url: str | None = None) -> Iterator[Site]:
    settings, c = seed(root, extra=extra, clock=clock, spacing=spacing, samples=samples,
                       database_url=database_url)
    app = create_web_app(WebDeps(
        sessions=c.sessions, reads=c.reads, policy=c.policy, desk=c.desk,
        attachments_dir=settings.attachments_dir, clock=c.clock, cookie_secure=cookie_secure,
        screening=c.screening(),
        acks=SentAcks(c.policy, from_address=settings.from_address,
                      phone=settings.helpdesk_phone)))
    server = ServerThread(app)
    try:
        yield Site(server.start(), settings, c, cookie_secure)
    finally:
        server.stop()
        c.engine.dispose()


def launch_chromium(playwright: Playwright) -> Browser:
    """Debian's Chromium, headless (Playwright's own browser download does not work here)."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                      headless=True)


def sample_id(name: str) -> str:
    """The Message-ID of a sample email, without angle brackets."""
    raw = next((DATA_DIR / "samples").glob(f"{name}*.eml")).read_bytes()
    return str(email.message_from_bytes(raw)["Message-ID"]).strip().strip("<>")


@contextlib.contextmanager
def new_page(browser: Browser, **options: Any) -> Iterator[Page]:
    """A page in a context of its own (no cookies shared), 1400 x 900, 10 s timeouts;
    ``options``: more of ``Browser.new_context``'s."""
    context = browser.new_context(viewport={"width": 1400, "height": 900}, **options)
    context.set_default_timeout(10_000)
    try:
        yield context.new_page()
    finally:
        context.close()


def no_sideways_scroll(page: Page) -> None:
    width, inner = page.evaluate("[document.documentElement.scrollWidth, innerWidth]")
    assert width <= inner, f"{page.url}: the page is {width} px wide in a {inner} px window"


def log_in(page: Page, site: Site, name: str = STAFF, password: str = STAFF_PASSWORD,
           path: str = "/queue") -> None:
    """Through the login form, as a person would."""
    page.goto(site.url(path))
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", password)
    with page.expect_navigation():
        page.click("form[action='/login'] button[type=submit]")


# ---- pytest fixtures -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with running_site(tmp_path_factory.mktemp("web"), extra=[xss_email()]) as s:
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing (scripts/test.sh installs Debian's chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as p:
        b = launch_chromium(p)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    with new_page(browser) as pg:
        yield pg


@pytest.fixture
def second(browser: Browser) -> Iterator[Page]:
    """Another technician's browser: a context of its own (no shared cookies)."""
    with new_page(browser) as pg:
        yield pg


@pytest.fixture
def no_script(browser: Browser) -> Iterator[Page]:
    with new_page(browser, java_script_enabled=False) as pg:
        yield pg


__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "OTHER_STAFF", "STAFF", "STAFF_DISPLAY",
           "STAFF_PASSWORD", "XSS_FILENAME", "XSS_HTML", "XSS_MESSAGE_ID", "XSS_SENDER_NAME",
           "XSS_SUBJECT", "XSS_TEXT", "SeedClock", "ServerThread", "Site", "browser",
           "launch_chromium", "log_in", "new_page", "no_script", "no_sideways_scroll", "page",
           "running_site", "sample_id", "second", "seed", "site", "xss_email"]
