"""Parse, classify and store a fetched batch: in this process, or in a child process.

The runner (triage.pipeline) hands each fetched batch to an ``Ingestor`` and marks the
mailbox only after it returns, when the batch is committed. Two of them:

- ``LocalIngest`` does the work in the calling thread: ``TRIAGE_INGEST_WORKER=thread``,
  and tests that bring their own classifier.
- ``IngestWorker`` sends the batch to a child process that owns the parser, the model (its
  compiled scorer: numpy, no scikit-learn) and its own database connection. Ingestion is
  CPU-bound (parse, classify, store: ~2-3 ms a message) and one interpreter lock keeps a
  process on one core, while sending acknowledgments needs CPU at the same time; with the
  child, the two run on two cores (bench/results.md). The main process never imports
  numpy or the model, and a crash or an out-of-memory kill on a hostile message ends the
  child, not the daemon.

Nothing is lost when the child dies: the parent marks a batch only after the child has
committed it, so a batch the child died on is neither stored nor marked and is tried again
by a new child, one message at a time; a message the child dies on twice becomes a
quarantine record with that reason, so one poisonous message cannot stall the mailbox.
The child dies with the parent (``PR_SET_PDEATHSIG``, and end-of-file on its socket): a
SIGKILL of the daemon leaves no orphan writing to the database.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from classifiers.types import Decision, EmailInput
from triage.config import Settings
from triage.messages import ParsedEmail, RawMessage
from triage.parse import ParseError, parse
from triage.sla import SlaPolicy
from triage.workorders import Ingest, Outcome, RetryBatch, StoreConfig, WorkOrderStore

if TYPE_CHECKING:
    from classifiers.predict import Classifier

log = logging.getLogger(__name__)
DEBUG = logging.DEBUG

_READY_TIMEOUT = 180.0  # the compiled scorer loads in 250-280 ms cold here (bench_classifier)


# ---- the work itself ----------------------------------------------------------------------------
class ClassifierLike(Protocol):
    """What ingestion needs of ``classifiers.predict.Classifier``."""

    version: str

    def classify_many(self, emails: Sequence[EmailInput]) -> list[Decision]: ...


def stage(event: str, raw: RawMessage, level: int = DEBUG, **fields: object) -> None:
    """One stage event for one message: ids only (see triage.pipeline's docstring)."""
    log.log(level, "%s uid=%s", event, raw.uid,
            extra={"event": event, "mailbox": raw.mailbox, "uid": raw.uid, **fields})


def to_input(p: ParsedEmail) -> EmailInput:
    return EmailInput(subject=p.subject, body=p.text, sender=p.from_addr,
                      headers=p.header_map(), html=p.html)


# Wraps each step of ingestion with the number of messages it covers; the ingest worker's
# enforces its CPU budget per message (see _CpuBudget), elsewhere it does nothing.
Guard = Callable[[int], AbstractContextManager[None]]


def _unguarded(messages: int) -> AbstractContextManager[None]:
    return contextlib.nullcontext()


def prepare_batch(raws: Sequence[RawMessage], classifier: ClassifierLike,
                  guard: Guard = _unguarded) -> list[Ingest]:
    """Parse and classify; every failure becomes an ``Ingest`` with ``error`` set."""
    items: list[Ingest | None] = []
    parsed_at: list[tuple[int, ParsedEmail]] = []
    debug = log.isEnabledFor(DEBUG)
    for raw in raws:
        if raw.data is None:
            items.append(Ingest(raw=raw, error=f"oversize: {raw.size} bytes; left on the server"))
            continue
        try:
            with guard(1):
                p = parse(raw.data)
        except ParseError as e:
            items.append(Ingest(raw=raw, error=f"unparseable: {e}"))
            continue
        except Exception as e:  # the stdlib parser has surprises; never lose the message
            log.exception("parser crashed on uid=%s", raw.uid)
            items.append(Ingest(raw=raw, error=f"parser error: {type(e).__name__}"))
            continue
        if debug:
            stage("parsed", raw, size=raw.size, attachments=len(p.attachments),
                  defects=len(p.defects))
        parsed_at.append((len(items), p))
        items.append(None)
    decisions: list[Decision | None]
    try:
        with guard(len(parsed_at)):
            decisions = list(classifier.classify_many([to_input(p) for _, p in parsed_at]))
    except Exception:
        log.exception("batch classification failed; classifying one by one")
        decisions = []
        for _, p in parsed_at:
            try:
                decisions.append(classifier.classify_many([to_input(p)])[0])
            except Exception:
                log.exception("classifier failed on one message")
                decisions.append(None)
    for (i, p), d in zip(parsed_at, decisions, strict=True):
        raw = raws[i]
        if debug and d is not None:
            stage("classified", raw, label=d.label, confidence=round(float(d.confidence), 3),
                  priority=d.priority, screened_by=d.screened_by)
        items[i] = Ingest(raw=raw, parsed=p, decision=d,
                          error=None if d is not None else "classifier error")
    return [i for i in items if i is not None]


def ingest_batch(store: WorkOrderStore, classifier: ClassifierLike,
                 batch: Sequence[RawMessage], guard: Guard = _unguarded) -> list[Outcome]:
    """Parse, classify and store what is not stored yet; committed when this returns."""
    if not batch:
        return []
    first = batch[0]
    stored = store.stored_uids(first.mailbox, first.uidvalidity, [r.uid for r in batch])
    fresh = [r for r in batch if r.uid not in stored]
    outcomes = [Outcome(r.uid, "already") for r in batch if r.uid in stored]
    if fresh:
        items = prepare_batch(fresh, classifier, guard)
        with guard(len(items)):
            outcomes += store.store_batch(items)
    return outcomes


def make_store(settings: Settings, sessions: sessionmaker[Session], policy: SlaPolicy,
               clock: Callable[[], datetime], reads: sessionmaker[Session] | None
               ) -> WorkOrderStore:
    """The work-order store, as the daemon and its ingest worker both build it."""
    return WorkOrderStore(
        sessions, policy,
        StoreConfig(from_address=settings.from_address,
                    ack_rate_per_hour=settings.ack_rate_per_hour,
                    ack_rate_per_domain_per_hour=settings.ack_rate_per_domain_per_hour,
                    ack_rate_global_per_hour=settings.ack_rate_global_per_hour,
                    own_addresses=tuple(settings.own_addresses()),
                    own_domains=tuple(settings.own_domain_names()),
                    attachments_dir=settings.attachments_dir,
                    review_threshold=settings.review_threshold,
                    at_risk_fraction=settings.at_risk_fraction,
                    notify_webhook=settings.notify_webhook_url is not None),
        clock, reads,
    )


def load_classifier(path: Path) -> Classifier:
    from classifiers.predict import Classifier

    return Classifier.load(path)


# ---- the two ingestors --------------------------------------------------------------------------
class Ingestor(Protocol):
    """Where batches are parsed, classified and stored. ``store`` blocks: the runner calls
    it from its ingest thread, one batch at a time."""

    model_path: Path | None  # the classifier's artifact; None for a test's own classifier
    model_version: str | None

    def store(self, batch: list[RawMessage]) -> list[Outcome]: ...

    def load_model(self, path: Path) -> str:
        """Swap the classifier for the artifact at ``path``; returns its version."""
        ...

    def close(self) -> None: ...


class LocalIngest:
    """Ingestion in the calling thread."""

    def __init__(self, store: WorkOrderStore, classifier: ClassifierLike,
                 model_path: Path | None = None, guard: Guard = _unguarded) -> None:
        self.work_orders = store
        self.classifier = classifier
        self.model_path = model_path
        self.model_version: str | None = getattr(classifier, "version", None)
        self.guard = guard

    def store(self, batch: list[RawMessage]) -> list[Outcome]:
        return ingest_batch(self.work_orders, self.classifier, batch, self.guard)

    def load_model(self, path: Path) -> str:
        classifier = load_classifier(path)  # loaded first: a bad file keeps the old one
        self.classifier, self.model_path = classifier, path
        self.model_version = classifier.version
        return classifier.version

    def close(self) -> None:
        pass


# ---- the worker's messages ----------------------------------------------------------------------
# What the parent and the child send each other, pickled over their socket pair: one frozen
# dataclass per kind, so both ends are type-checked against the same fields. The child runs
# this module as itself (_CHILD_COMMAND), so a pickle names the same classes on both sides.

@dataclass(frozen=True)
class Start:
    """The first message, parent to child: what to load."""

    settings: Settings
    model_path: str
    parent_pid: int


@dataclass(frozen=True)
class StoreBatch:
    kind: ClassVar[str] = "store"
    batch: list[RawMessage]


@dataclass(frozen=True)
class Quarantine:
    """Store ``raw`` as a quarantine record with ``reason``, without parsing it."""

    kind: ClassVar[str] = "quarantine"
    raw: RawMessage
    reason: str


@dataclass(frozen=True)
class LoadModel:
    kind: ClassVar[str] = "load"
    path: str


@dataclass(frozen=True)
class Stop:
    """Exit after the request in hand (there is none: requests are one at a time)."""

    kind: ClassVar[str] = "stop"


Request = StoreBatch | Quarantine | LoadModel | Stop


@dataclass(frozen=True)
class Ready:
    """The child's first answer: model and database loaded."""

    model_version: str | None


@dataclass(frozen=True)
class StartFailed:
    """The child's first answer when it could not start; it exits after sending it."""

    error: str


@dataclass(frozen=True)
class Stored:
    outcomes: list[Outcome]


@dataclass(frozen=True)
class Loaded:
    version: str


@dataclass(frozen=True)
class Retry:
    """The store asked for the batch again (RetryBatch): ``detail`` is its cause."""

    reason: str
    detail: str


@dataclass(frozen=True)
class Failed:
    error: str


Answer = Ready | StartFailed | Stored | Loaded | Retry | Failed
_Expected = TypeVar("_Expected", Stored, Loaded)


class IngestWorkerError(Exception):
    """The child could not start (no model, no database): the daemon cannot ingest."""


class WorkerDied(Exception):
    """The child exited in the middle of a request."""


class IngestWorker:
    """The parent's handle on the child: one request at a time, from any thread.

    ``start()`` spawns the child (a fresh interpreter running ``_child_entry``: no fork
    of a threaded parent, and nothing of multiprocessing's machinery, whose resource tracker
    would be a third process), which imports and loads ``model_path`` while the parent goes
    on; the first request waits until it is ready. Requests and answers are the messages
    above, pickled over a socket pair, both ends ours."""

    def __init__(self, settings: Settings, model_path: Path) -> None:
        self.settings = settings
        self.model_path: Path | None = model_path
        self.model_version: str | None = None
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._ready = False
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        # The child imports this package from where the parent did, installed or not.
        here = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD_COMMAND, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env)
        finally:
            theirs.close()  # only the child's copy stays open: its exit is our end-of-file
        conn = Connection(ours.detach())
        conn.send(Start(self.settings, str(self.model_path), os.getpid()))
        self._proc, self._conn, self._ready = proc, conn, False

    def wait_ready(self, timeout: float = _READY_TIMEOUT) -> None:
        """Block until the child has its model and database; raise what stopped it."""
        with self._lock:
            self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        if self._proc is None:
            self.start()
        if self._ready:
            return
        assert self._conn is not None
        try:
            try:
                if not self._conn.poll(timeout):
                    raise IngestWorkerError(
                        f"the ingest worker did not start in {timeout:.0f}s")
                answer: Answer = self._conn.recv()
            except (EOFError, OSError) as e:
                raise IngestWorkerError(
                    f"the ingest worker exited at start-up (code {self._exitcode()})") from e
            if not isinstance(answer, Ready):
                error = answer.error if isinstance(answer, StartFailed) else repr(answer)
                raise IngestWorkerError(f"the ingest worker could not start: {error}")
        except IngestWorkerError:
            # Forget this child, so the next request starts a fresh one: kept, its closed
            # socket would fail every later request and ingestion would stop for good in a
            # process that looks alive (a respawn killed while loading its model, say).
            self._discard()
            raise
        self.model_version = answer.model_version
        self._ready = True
        log.info("ingest worker %s ready; classifier %s from %s", self.pid, self.model_version,
                 self.model_path)

    def close(self, timeout: float = 10.0) -> None:
        """Ask the child to stop after the request in hand; kill it if it does not."""
        with self._lock:
            if self._proc is None:
                return
            if self._conn is not None:
                with contextlib.suppress(OSError, ValueError):
                    self._conn.send(Stop())
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout)
            self._discard()  # kills it if it did not stop

    def _discard(self) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        self._ready = False
        if conn is not None:
            conn.close()
        if proc is not None and proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _exitcode(self) -> int | None:
        if self._proc is None:
            return None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(1)
        return self._proc.returncode

    # ---- requests ----------------------------------------------------------------------------
    def _call(self, request: Request, expected: type[_Expected]) -> _Expected:
        """Send ``request``; return the child's answer if it is an ``expected``, raise what
        any other answer says."""
        with self._lock:
            if self._proc is not None and self._ready and not self._alive():
                self._respawn("found dead")
            self._wait_ready(_READY_TIMEOUT)
            assert self._conn is not None
            try:
                self._conn.send(request)
                answer: Answer = self._conn.recv()
            except (EOFError, OSError) as e:
                code = self._exitcode()
                why = _death(code)
                self._respawn(f"{why} during {request.kind!r}")
                raise WorkerDied(f"the ingest worker {why}") from e
        if isinstance(answer, expected):
            return answer
        if isinstance(answer, Retry):
            raise RetryBatch(answer.reason) from RuntimeError(answer.detail)
        error = answer.error if isinstance(answer, Failed) else f"unexpected answer {answer!r}"
        raise RuntimeError(f"ingest worker: {error}")

    def _respawn(self, why: str) -> None:
        log.error("ingest worker %s %s; starting a new one", self.pid, why)
        self._discard()
        self.restarts += 1
        self.start()

    def store(self, batch: list[RawMessage]) -> list[Outcome]:
        try:
            return self._call(StoreBatch(batch), Stored).outcomes
        except WorkerDied as e:
            if len(batch) > 1:
                log.error("%s on a batch of %d; trying its messages one at a time", e,
                          len(batch))
            return [self._store_alone(raw, str(e)) for raw in batch]

    def _store_alone(self, raw: RawMessage, first_death: str) -> Outcome:
        try:
            return self._call(StoreBatch([raw]), Stored).outcomes[0]
        except WorkerDied as e:
            reason = f"the ingest worker died on this message twice ({first_death}; {e})"
            log.error("uid=%s: %s; quarantined", raw.uid, reason)
            return self._call(Quarantine(raw, reason), Stored).outcomes[0]

    def load_model(self, path: Path) -> str:
        version = self._call(LoadModel(str(path)), Loaded).version
        # Kept for start(): a respawned child loads this one, not the one it began with.
        self.model_path, self.model_version = Path(path), version
        return version


def _death(code: int | None) -> str:
    """What an exit code of the child says, in words an operator can act on."""
    known = {
        _EXIT_MEMORY: "reached its memory limit (TRIAGE_INGEST_MEMORY_LIMIT)",
        -signal.SIGPROF: "exceeded its CPU budget per message (TRIAGE_INGEST_CPU_BUDGET)",
        -signal.SIGKILL: "was killed (SIGKILL: the kernel's out-of-memory killer, or an "
                         "operator)",
    }
    return f"exited with code {code}" + (f": {known[code]}" if code in known else "")


# ---- the child ----------------------------------------------------------------------------------
_EXIT_MEMORY = 86  # the child's exit code after a MemoryError (its address-space limit)


def _limit_memory(limit: int) -> None:
    """Cap the child's address space: past it, an allocation fails with MemoryError (and the
    child exits, see _CpuBudget) instead of the host swapping or its out-of-memory killer
    picking a victim, which may be PostgreSQL or Dovecot. Address space, not resident
    memory: the only limit the kernel enforces per process; the loaded child maps about
    210 MB (bench/results.md)."""
    if limit <= 0:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


class _CpuBudget:
    """The guard of each ingestion step in the child: ``seconds`` of CPU per message it
    covers, counted by the kernel (ITIMER_PROF: user and system time, so waiting for a
    database lock costs nothing). SIGPROF is left at its default action, which ends the
    process: that works even inside C code, where a Python exception could not be raised.
    The parent then retries the batch one message at a time and quarantines the message
    the child dies on twice. A MemoryError (the address-space limit) ends the child too,
    with its own exit code: after one, no state in this process can be trusted."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    @contextlib.contextmanager
    def __call__(self, messages: int) -> Iterator[None]:
        if self.seconds > 0:
            signal.setitimer(signal.ITIMER_PROF, self.seconds * max(1, messages))
        try:
            yield
        except MemoryError:
            _exit_out_of_memory()
        finally:
            if self.seconds > 0:
                signal.setitimer(signal.ITIMER_PROF, 0)


def _exit_out_of_memory() -> None:
    with contextlib.suppress(BaseException):  # logging itself may need memory
        log.error("ingest worker: memory limit reached; exiting")
    os._exit(_EXIT_MEMORY)


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL us when the parent goes, even in the middle of a batch (Linux; elsewhere the
    pipe's end-of-file between batches does it)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        os._exit(0)  # the parent died before the line above took effect


# The child's whole program: this module imported as itself (not run as ``__main__``), so
# what the two processes pickle to each other names the same classes.
_CHILD_COMMAND = ("import sys; from triage.ingest import _child_entry; "
                  "_child_entry(int(sys.argv[1]))")


def _child_entry(fd: int) -> None:
    """The child's entry: the socket to the parent is ``fd``."""
    conn = Connection(fd)
    start: Start = conn.recv()
    _child_main(conn, start.settings, start.model_path, start.parent_pid)


def _child_main(conn: Connection, settings: Settings, model_path: str, parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    # The parent decides when we stop (after the batch in hand); a terminal's Ctrl-C or a
    # service manager's SIGTERM to the whole group must not cut a batch short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from triage.logs import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    signal.signal(signal.SIGPROF, signal.SIG_DFL)
    try:
        _limit_memory(settings.ingest_memory_limit)
        child = _Child(settings, Path(model_path))
    except Exception as e:
        log.exception("ingest worker could not start")
        with contextlib.suppress(OSError):
            conn.send(StartFailed(f"{type(e).__name__}: {e}"))
        sys.exit(1)
    conn.send(Ready(child.ingest.model_version))
    while True:
        try:
            request: Request = conn.recv()
        except (EOFError, OSError):
            break  # the parent is gone
        except MemoryError:  # a batch too big to receive under the limit
            _exit_out_of_memory()
        if isinstance(request, Stop):
            break
        conn.send(child.handle(request))
    child.engine.dispose()


class _Child:
    def __init__(self, settings: Settings, model_path: Path) -> None:
        from triage.sla import load_policy
        from triage.storage.engine import make_engine, make_read_sessionmaker, make_sessionmaker

        self.engine = make_engine(settings.database_url)
        policy = load_policy(settings.sla_policy_path)
        store = make_store(settings, make_sessionmaker(self.engine), policy,
                           lambda: datetime.now(UTC), make_read_sessionmaker(self.engine))
        self.ingest = LocalIngest(store, load_classifier(model_path), model_path,
                                  _CpuBudget(settings.ingest_cpu_budget))

    def handle(self, request: Request) -> Answer:
        try:
            if isinstance(request, StoreBatch):
                return Stored(self.ingest.store(request.batch))
            if isinstance(request, Quarantine):
                return Stored(self.ingest.work_orders.store_batch(
                    [Ingest(raw=request.raw, error=request.reason)]))
            if isinstance(request, LoadModel):
                version = self.ingest.load_model(Path(request.path))
                log.info("ingest worker: classifier %s loaded from %s", version, request.path)
                return Loaded(version)
            return Failed(f"unknown request {request!r}")
        except RetryBatch as e:
            return Retry(str(e), str(e.__cause__ or "no detail"))
        except MemoryError:
            _exit_out_of_memory()
            raise  # not reached
        except Exception as e:
            log.exception("ingest worker: %s failed", request.kind)
            return Failed("".join(traceback.format_exception_only(e)).strip())

