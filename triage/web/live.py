"""The live queue's poll and presence on the work-order page, under /api/v1.
``triage.desk.live`` does the work and argues for polling over server-sent events;
``templates/web/js/live.js`` is the script that polls and sends heartbeats. Without the script
the queue is reloaded by hand and the work-order page shows who was there when it was made
(``triage.web.pages``). The API's collision guard is in ``triage.web.api``.

One router, included by ``triage.web.app``; its routes take the caller from
``triage.web.auth`` (``ApiWho``: a cookie-signed POST needs ``X-CSRF-Token``) like every
other API route.
"""

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from triage.desk import live
from triage.desk.actions import NotFound
from triage.web.auth import ApiWho
from triage.web.deps import Deps, Number

EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)  # a cursor before this is no cursor of ours

router = APIRouter(prefix="/api/v1", tags=["live"])


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


@router.get("/changes", summary="Work orders changed since a cursor (the live queue's poll)",
            description="Without ``since``: only the cursor to start from. With it: the work "
            "orders (number, version, time) changed after it, newest first, looking two "
            "minutes further back (tell seen from new by number and version), at most 200; "
            "``more``: there were more, reload instead. Poll every few seconds with the "
            "``cursor`` of the last answer.")
def api_changes(deps: Deps, who: ApiWho, since: Annotated[str | None, Query(
        max_length=40, description="the cursor of the last answer")] = None) -> dict[str, Any]:
    after = _cursor(since)
    with deps.reads() as s:
        c = live.changes_since(s, after)
    return {"cursor": c.cursor.astimezone(UTC).isoformat() if c.cursor else None,
            "more": c.more,
            "work_orders": [{"number": w.number, "version": w.version,
                             "updated_at": w.updated_at.astimezone(UTC).isoformat()}
                            for w in c.work_orders]}


@router.get("/work-orders/{number}/presence",
            summary="Who else has the work order open (heartbeat in the last minute)")
def api_presence(deps: Deps, who: ApiWho, number: Number) -> dict[str, Any]:
    with deps.reads() as s:
        try:
            seen = live.present(s, number, deps.clock(), besides=who.user_id)
        except NotFound:
            raise HTTPException(404, f"no work order {number}") from None
    return _present_json(seen)


@router.post("/work-orders/{number}/presence",
             summary="Heartbeat: the caller has the work order open (every 20 s), is typing a "
             "reply, or has left; answers who else is there and the version")
def api_heartbeat(deps: Deps, who: ApiWho, number: Number, body: Heartbeat) -> dict[str, Any]:
    with deps.sessions.begin() as s:
        try:
            seen = live.heartbeat(s, number, who.user_id, body.state, deps.clock())
        except NotFound:
            raise HTTPException(404, f"no work order {number}") from None
    return _present_json(seen)


__all__ = ["router"]
