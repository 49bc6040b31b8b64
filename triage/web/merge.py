"""The merge action on the work-order page and in the API (``triage.desk.merge`` does the
work). Two routers, included by ``triage.web.app``: ``router`` (the form) and ``api`` (under
/api/v1); the caller comes from ``triage.web.auth`` like every other staff route.

Not a row of ``triage.web.actions``: a merge answers with the work order that carries the
thread on (the form goes there, the API names both), not with the page it was sent from."""

import re
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, HTTPException
from fastapi.responses import RedirectResponse, Response
from pydantic import Field

from triage.desk.actions import ActionError, Conflict, NotFound
from triage.desk.merge import merge
from triage.web.actions import Guarded
from triage.web.api import CONFLICT_DOC, IfMatch, desk_errors, guard
from triage.web.auth import ApiWho, Who, check_csrf
from triage.web.deps import ID_MAX, NUMBER_PATTERN, Csrf, Deps, Number, Render
from triage.web.pages import work_order_view

router = APIRouter(include_in_schema=False)
api = APIRouter(prefix="/api/v1", tags=["work orders"])

# The other work order as typed: bounded here, its form checked in the route (so a typo is
# answered on the page, not with a bare validation error).
Other = Annotated[str, Form(max_length=32)]
Version = Annotated[int | None, Form(ge=1, le=ID_MAX)]


class MergeBody(Guarded):
    other: str = Field(max_length=32, pattern=NUMBER_PATTERN,
                       description="the other work order's number; the later of the two "
                                   "joins the earlier")


@router.post("/work-orders/{number}/merge")
def f_merge(deps: Deps, render: Render, who: Who, number: Number, csrf_token: Csrf,
            other: Other, version: Version = None) -> Response:
    check_csrf(who, csrf_token)
    try:
        wanted = other.strip().upper()
        if not re.fullmatch(NUMBER_PATTERN, wanted):
            raise ActionError("give the other work order's number, e.g. ITX-000123")
        done = merge(deps.desk, number, wanted, who.name, version=version)
    except NotFound:
        raise HTTPException(404, f"no work order {number}") from None
    except Conflict as e:
        return work_order_view(deps, render, who, number, error=str(e), status=409,
                               conflict=e)
    except ActionError as e:
        return work_order_view(deps, render, who, number, error=str(e), status=422)
    return RedirectResponse(f"/work-orders/{quote(done.survivor)}?"
                            f"{urlencode({'done': 'merged'})}", status_code=303)


@api.post("/work-orders/{number}/merge", summary="Merge with another work order of the "
          "same client: the later one's thread joins the earlier, the later one is resolved "
          "with a pointer and its SLA clocks stop (the collision guard: the version of "
          "``number``)", responses=CONFLICT_DOC)
def api_merge(deps: Deps, who: ApiWho, number: Number, body: MergeBody,
              if_match: IfMatch) -> dict[str, Any]:
    with desk_errors(number):
        done = merge(deps.desk, number, body.other, who.name, version=guard(body, if_match))
    return {"survivor": done.survivor, "merged": done.merged,
            "messages_moved": done.messages}


__all__ = ["MergeBody", "api", "router"]
