"""Files a technician attaches to a reply: the limits, and the checks before anything is
stored. Files are kept like a client's attachments (content-addressed under
``attachments_dir``, triage.store.model), written by ``store`` before the reply's
transaction (``Desk.reply(files=...)``), which only adds their rows: a refused or
rolled-back reply leaves at most an unreferenced file, never a row without its file.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from triage.desk.actions import ActionError
from triage.parse import clean_header
from triage.store.model import attachment_path, save_attachment

MB = 1024 * 1024
_CONTENT_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")


@dataclass(frozen=True)
class UploadLimits:
    max_files: int = 10
    max_file_bytes: int = 10 * MB
    max_total_bytes: int = 20 * MB

    def describe(self) -> str:
        return (f"at most {self.max_files} files, {_size(self.max_file_bytes)} each and "
                f"{_size(self.max_total_bytes)} in all")


class UploadRefused(ActionError):
    """The files break a limit; ``status`` is the HTTP answer (413: too large)."""

    def __init__(self, message: str, status: int = 413) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Upload:
    """One file as the browser sent it."""

    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class StoredFile:
    filename: str
    content_type: str
    size: int
    sha256: str
    path: str

    def context(self) -> dict[str, Any]:
        """What the outbox row's context keeps for the renderer (triage.desk.mail)."""
        return {"filename": self.filename, "content_type": self.content_type,
                "size": self.size, "sha256": self.sha256}


def _size(n: int) -> str:
    if n >= MB:
        return f"{n / MB:.3g} MB"
    return f"{n / 1024:.3g} KB" if n >= 1024 else f"{n} bytes"


def safe_filename(name: str, index: int) -> str:
    """No folders, no control characters, no leading dots; at most 255 characters."""
    name = clean_header(name or "", 400).replace("\\", "/").rsplit("/", 1)[-1]
    return name.strip(". ")[:255] or f"attachment-{index}"


def content_type(given: str | None) -> str:
    ctype = (given or "").split(";", 1)[0].strip().lower()
    return ctype if _CONTENT_TYPE.match(ctype) else "application/octet-stream"


def check(uploads: Sequence[Upload], limits: UploadLimits) -> None:
    if len(uploads) > limits.max_files:
        raise UploadRefused(f"{len(uploads)} files: a reply takes {limits.describe()}", 422)
    total = 0
    for u in uploads:
        if len(u.data) > limits.max_file_bytes:
            raise UploadRefused(f"{safe_filename(u.filename, 1)!r} is larger than "
                                f"{_size(limits.max_file_bytes)}: a reply takes "
                                f"{limits.describe()}")
        total += len(u.data)
    if total > limits.max_total_bytes:
        raise UploadRefused(f"the files come to {_size(total)}: a reply takes "
                            f"{limits.describe()}")


def store(uploads: Sequence[Upload], attachments_dir: Path | None,
          limits: UploadLimits) -> list[StoredFile]:
    """Check ``uploads`` against ``limits`` and write them to disk; their records."""
    if not uploads:
        return []
    check(uploads, limits)
    if attachments_dir is None:
        raise UploadRefused("this desk has no attachments folder configured", 422)
    out = []
    for i, u in enumerate(uploads, 1):
        sha = hashlib.sha256(u.data).hexdigest()
        save_attachment(attachments_dir, sha, u.data)
        out.append(StoredFile(safe_filename(u.filename, i), content_type(u.content_type),
                              len(u.data), sha, str(attachment_path(attachments_dir, sha))))
    return out


__all__ = ["MB", "StoredFile", "Upload", "UploadLimits", "UploadRefused", "check",
           "content_type", "safe_filename", "store"]
