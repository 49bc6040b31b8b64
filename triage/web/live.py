"""The live queue's poll, presence on the work-order page, and the API's collision guard
(``version`` in a body or ``If-Match``). ``triage.desk.live`` does the work and argues for
polling over server-sent events; ``templates/web/js/live.js`` is the script that polls and
sends heartbeats. Without the script the queue is reloaded by hand and the work-order page
shows who was there when it was made.

Added to the app by ``create_web_app`` with its own login and CSRF checks (a cookie-signed
POST needs ``X-CSRF-Token``), so these routes follow the same rules as every other API route.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Query
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from triage.desk import live
from triage.desk.actions import Conflict, NotFound

ID_MAX = 2**31 - 1
NUMBER_PATTERN = r"^ITX-\d{6,12}$"
Number = Annotated[str, PathParam(pattern=NUMBER_PATTERN, description="e.g. ITX-000123")]
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)  # a cursor before this is no cursor of ours

VERSION_DOC = ("the work order's version the caller last saw (``version`` in its JSON; also "
               "the ``ETag``); when the work order has changed since, nothing is done and "
               "the answer is 409 with the changes. Absent: no check")
CONFLICT_DOC: dict[int | str, dict[str, Any]] = {409: {"description": (
    "The work order changed after the version given (``version`` or ``If-Match``); nothing "
    "was done. ``detail``: ``message``, ``number``, ``your_version``, ``current_version`` and "
    "``changes`` (the audit events since, oldest first: ``at``, ``actor``, ``action``, "
    "``detail``, ``version``). The ``ETag`` header holds the current version.")}}


class Guarded(BaseModel):
    """A body that may carry the collision guard's version."""

    version: int | None = Field(default=None, ge=1, le=ID_MAX, description=VERSION_DOC)


def if_match(if_match: Annotated[str | None, Header(
        max_length=64, description="the version as an entity tag (``\"7\"``; ``*`` or "
        "absent: no check); the same as ``version`` in the body")] = None) -> int | None:
    """The version an ``If-Match`` header names (a quoted number, weak or strong)."""
    if if_match is None or if_match.strip() == "*":
        return None
    tag = if_match.strip().removeprefix("W/").strip('"')
    if not tag.isdigit() or not 1 <= int(tag) <= ID_MAX:
        raise HTTPException(422, "If-Match must be a work order version, e.g. \"7\"")
    return int(tag)


IfMatch = Annotated[int | None, Depends(if_match)]


def guard(body: Guarded | None, header: int | None) -> int | None:
    """The version to check: the body's or the header's (they must agree if both given)."""
    given = body.version if body is not None else None
    if given is not None and header is not None and given != header:
        raise HTTPException(422, "version and If-Match name different versions")
    return given if given is not None else header


def conflict_error(e: Conflict) -> HTTPException:
    """409 with what changed since the caller's version."""
    return HTTPException(409, detail={
        "message": str(e), "number": e.number, "your_version": e.seen,
        "current_version": e.current,
        "changes": [{"at": c.at.astimezone(UTC).isoformat(), "actor": c.actor,
                     "action": c.action, "detail": c.detail, "version": c.version}
                    for c in e.changes]}, headers={"ETag": f'"{e.current}"'})


class Heartbeat(BaseModel):
    state: Literal["viewing", "replying", "left"] = Field(
        default="viewing", description="viewing the page, typing a reply, or leaving it")


def _present_json(seen: live.Seen) -> dict[str, Any]:
    return {"version": seen.version,
            "others": [{"name": p.name, "display_name": p.display_name, "state": p.state,
                        "seen_at": p.seen_at.astimezone(UTC).isoformat()}
                       for p in seen.others]}


def _cursor(since: str | None) -> datetime | None:
    if since is None:
        return None
    try:
        t = datetime.fromisoformat(since)
    except ValueError:
        raise HTTPException(422, "since must be a cursor this endpoint gave") from None
    if t.tzinfo is None or not EARLIEST <= t <= datetime(9000, 1, 1, tzinfo=UTC):
        raise HTTPException(422, "since must be a cursor this endpoint gave")
    return t


@dataclass
class LiveRoutes:
    """What the routes need from ``create_web_app``."""

    deps: Any  # triage.web.app.WebDeps (not imported: that module imports this one)
    api_principal: Callable[..., Any]  # the signed-in caller, with the API's CSRF check

    def add(self, api: APIRouter) -> None:
        deps = self.deps
        ApiWho = Annotated[Any, Depends(self.api_principal)]

        @api.get("/changes", tags=["live"], summary="Work orders changed since a cursor "
                 "(the live queue's poll)",
                 description="Without ``since``: only the cursor to start from. With it: "
                 "the work orders (number, version, time) changed after it, newest first, "
                 "looking two minutes further back (tell seen from new by number and "
                 "version), at most 200; ``more``: there were more, reload instead. Poll "
                 "every few seconds with the ``cursor`` of the last answer.")
        def api_changes(who: ApiWho, since: Annotated[str | None, Query(
                max_length=40, description="the cursor of the last answer")] = None
                        ) -> dict[str, Any]:
            after = _cursor(since)
            with deps.reads() as s:
                c = live.changes_since(s, after)
            return {"cursor": c.cursor.astimezone(UTC).isoformat() if c.cursor else None,
                    "more": c.more,
                    "work_orders": [{"number": w.number, "version": w.version,
                                     "updated_at": w.updated_at.astimezone(UTC).isoformat()}
                                    for w in c.work_orders]}

        @api.get("/work-orders/{number}/presence", tags=["live"],
                 summary="Who else has the work order open (heartbeat in the last minute)")
        def api_presence(who: ApiWho, number: Number) -> dict[str, Any]:
            with deps.reads() as s:
                try:
                    seen = live.present(s, number, deps.clock(), besides=who.user_id)
                except NotFound:
                    raise HTTPException(404, f"no work order {number}") from None
            return _present_json(seen)

        @api.post("/work-orders/{number}/presence", tags=["live"],
                  summary="Heartbeat: the caller has the work order open (every 20 s), is "
                  "typing a reply, or has left; answers who else is there and the version")
        def api_heartbeat(who: ApiWho, number: Number, body: Heartbeat) -> dict[str, Any]:
            with deps.sessions.begin() as s:
                try:
                    seen = live.heartbeat(s, number, who.user_id, body.state, deps.clock())
                except NotFound:
                    raise HTTPException(404, f"no work order {number}") from None
            return _present_json(seen)


__all__ = ["CONFLICT_DOC", "Guarded", "IfMatch", "LiveRoutes", "conflict_error", "guard",
           "if_match"]
