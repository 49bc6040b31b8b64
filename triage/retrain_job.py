"""The daemon's model jobs: the nightly retrain, in a process of its own, and the refresh
that picks up a model another process retrained.

Training imports scikit-learn and peaks at ~300 MB; the daemon's main process, which never
loads either, must not keep that afterwards, so training runs in a fresh interpreter whose
memory is returned when it ends (``in_subprocess``). The new model is swapped into the
running ingestion only when the retrain says it is not worse on the held-out set
(classifiers.retrain).
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from classifiers.installed import best_model_path
from triage.config import Settings
from triage.storage.engine import make_engine, make_read_sessionmaker

if TYPE_CHECKING:
    from classifiers.retrain import RetrainResult
    from triage.ingest import Ingestor

log = logging.getLogger(__name__)
T = TypeVar("T")


class ModelJobs:
    """The scheduled jobs that change ``ingest``'s model. ``may_train`` says whether this
    process is the one that trains (it holds the first mailbox's lease)."""

    def __init__(self, settings: Settings, ingest: Ingestor,
                 may_train: Callable[[], bool]) -> None:
        self.settings = settings
        self.ingest = ingest
        self.may_train = may_train

    async def retrain(self) -> None:
        """Nightly: corrections to training data, train, swap only if not worse on the
        held-out set."""
        if not self.may_train():
            return
        s = self.settings
        try:
            result = await asyncio.to_thread(
                in_subprocess, retrain_from_database, s.database_url, s.corrections_dir,
                s.retrained_model_dir, self.ingest.model_path, s.model_path, s.training_dir,
                s.heldout_dir, s.keywords_path)
        except Exception:
            log.exception("nightly retrain failed; the current model stays")
            return
        log.info("nightly retrain: %s (macro-F1 %s -> %s, %d corrections)", result.reason,
                 result.old_macro_f1, result.new_macro_f1, result.corrections)
        if result.swapped:
            await self._load(result.model_path)

    async def refresh(self) -> None:
        """Other processes pick up a model another one retrained (a shared model folder)."""
        try:
            path = await asyncio.to_thread(best_model_path, self.settings.model_path,
                                           self.settings.retrained_model_dir)
            if path != self.ingest.model_path:
                await self._load(path)
        except Exception:
            log.exception("model refresh failed; the current model stays")

    async def _load(self, path: Path) -> None:
        version = await asyncio.to_thread(self.ingest.load_model, path)
        log.info("classifier %s loaded from %s", version, path)


def retrain_from_database(database_url: str, corrections_dir: Path, retrained_dir: Path,
                          current: Path | None, packaged: Path | None,
                          training: Path | None = None, heldout: Path | None = None,
                          keywords: Path | None = None) -> RetrainResult:
    """``classifiers.retrain.nightly`` with a connection of its own (runs in a subprocess);
    ``training``, ``heldout`` and ``keywords`` default to the shipped data/."""
    from classifiers.retrain import nightly

    engine = make_engine(database_url)
    try:
        return nightly(make_read_sessionmaker(engine), corrections_dir, retrained_dir, current,
                       packaged_model_path=packaged, keywords_path=keywords,
                       **({"heldout_dir": heldout} if heldout else {}),
                       **({"training": [training]} if training else {}))
    finally:
        engine.dispose()


def in_subprocess(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` in a fresh interpreter, whose memory is returned when it ends.

    Started as the ingest worker is (triage.ingest): ``subprocess`` and pickles over pipes
    (the call on stdin, the answer on stdout; the child's own output goes to stderr), not
    ``multiprocessing``, whose resource tracker, once started, stays beside the daemon for
    the rest of its life (bench/results.md). ``fn`` is named by reference: a module-level
    function of this package."""
    here = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-c", _CHILD_COMMAND], input=pickle.dumps((fn, args)),
                          stdout=subprocess.PIPE, env=env, check=False)
    if done.returncode != 0 or not done.stdout:
        raise RuntimeError(f"the subprocess for {fn.__name__} exited with code "
                           f"{done.returncode}")
    ok, value = pickle.loads(done.stdout)
    if not ok:
        raise RuntimeError(f"{fn.__name__} failed in its subprocess: {value}")
    return value


_CHILD_COMMAND = "from triage.retrain_job import _child_main; _child_main()"


def _child_main() -> None:
    answer = sys.stdout.buffer
    sys.stdout = sys.stderr  # whatever the work prints must not corrupt the answer
    fn, args = pickle.load(sys.stdin.buffer)
    result: tuple[bool, Any]
    try:
        result = (True, fn(*args))
    except Exception as e:
        log.exception("%s failed", getattr(fn, "__name__", fn))
        result = (False, f"{type(e).__name__}: {e}")
    answer.write(pickle.dumps(result))
    answer.flush()
