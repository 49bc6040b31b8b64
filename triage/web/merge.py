"""The merge action on the work-order page and in the API (``triage.desk.merge`` does the
work). Added by ``create_web_app`` with its login and CSRF checks, like every staff route."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException
from fastapi import Path as PathParam
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel, Field

from triage.desk.actions import ActionError, Conflict, NotFound
from triage.desk.merge import merge

NUMBER_PATTERN = r"^ITX-\d{6,12}$"
Number = Annotated[str, PathParam(pattern=NUMBER_PATTERN, description="e.g. ITX-000123")]
# The other work order as typed: bounded here, its form checked in the form route (so a
# typo is answered on the page, not with a bare validation error).
Other = Annotated[str, Form(max_length=32)]


class MergeBody(BaseModel):
    other: str = Field(max_length=32, pattern=NUMBER_PATTERN,
                       description="the other work order's number; the later of the two "
                                   "joins the earlier")


@dataclass
class MergeRoutes:
    """What the routes need from ``create_web_app``."""

    deps: Any  # triage.web.app.WebDeps (not imported: that module imports this one)
    principal: Callable[..., Any]
    api_principal: Callable[..., Any]
    check_csrf: Callable[[Any, str | None], None]
    # The work-order page with an error: (who, number, *, error, status, conflict)
    page_with_error: Callable[..., Response]

    def add(self, app: FastAPI, api: APIRouter) -> None:
        deps, check_csrf, page_with_error = self.deps, self.check_csrf, self.page_with_error
        Who = Annotated[Any, Depends(self.principal)]
        ApiWho = Annotated[Any, Depends(self.api_principal)]

        @app.post("/work-orders/{number}/merge", include_in_schema=False)
        def f_merge(who: Who, number: Number, csrf_token: Annotated[str, Form(max_length=200)],
                    other: Other,
                    version: Annotated[int | None, Form(ge=1, le=2**31 - 1)] = None
                    ) -> Response:
            check_csrf(who, csrf_token)
            try:
                wanted = other.strip().upper()
                if not wanted.startswith("ITX-") or not wanted[4:].isdigit() or not (
                        6 <= len(wanted) - 4 <= 12):
                    raise ActionError("give the other work order's number, e.g. ITX-000123")
                done = merge(deps.desk, number, wanted, who.name, version=version)
            except NotFound:
                raise HTTPException(404, f"no work order {number}") from None
            except Conflict as e:
                return page_with_error(who, number, error=str(e), status=409, conflict=e)
            except ActionError as e:
                return page_with_error(who, number, error=str(e), status=422)
            return RedirectResponse(f"/work-orders/{quote(done.survivor)}?"
                                    f"{urlencode({'done': 'merged'})}", status_code=303)

        @api.post("/work-orders/{number}/merge", summary="Merge with another work order of "
                  "the same client: the later one's thread joins the earlier, the later one "
                  "is resolved with a pointer and its SLA clocks stop")
        def api_merge(who: ApiWho, number: Number, body: MergeBody) -> dict[str, Any]:
            try:
                done = merge(deps.desk, number, body.other, who.name)
            except NotFound:
                raise HTTPException(404, f"no work order {number}") from None
            except ActionError as e:
                raise HTTPException(422, str(e)) from None
            return {"survivor": done.survivor, "merged": done.merged,
                    "messages_moved": done.messages}


__all__ = ["MergeBody", "MergeRoutes"]
