"""Saved views and bulk actions (triage.desk.views, triage.desk.bulk) on real SQLite and
PostgreSQL: the defaults every user has, views saved, renamed and deleted per user, counts
equal to what the queue shows, and bulk actions that are the single actions row by row (one
audit event and one version each, the collision guard per row, a per-row report)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select, text

from tests.deskenv import events, get, open_wo, user_id
from triage.desk import users
from triage.desk.actions import NotFound
from triage.desk.bulk import (
    MAX_ROWS,
    BulkAction,
    BulkError,
    Target,
    parse_target,
    run_bulk,
)
from triage.desk.queue import queue_page
from triage.desk.views import (
    MAX_VIEWS,
    MINE,
    UNASSIGNED_URGENT,
    ViewError,
    change_view,
    delete_view,
    filter_from_args,
    navigation,
    save_view,
    total_statement,
    user_views,
)
from triage.storage.models import Correction, SavedView, WorkOrder


def counts(sessions, policy, clock, name: str = "bob") -> dict[str, int | None]:  # type: ignore[no-untyped-def]
    uid = user_id(sessions, name)
    with sessions() as s:
        return {v.name: v.count for v in navigation(s, uid, name, policy, clock.t)}


def shown(sessions, policy, clock, args: dict[str, str]) -> int:  # type: ignore[no-untyped-def]
    """What the queue page says for these query arguments."""
    with sessions() as s:
        return queue_page(s, policy, filter_from_args(args, policy), clock.t).total


@pytest.fixture
def desk_env(env):  # type: ignore[no-untyped-def]
    sessions = env[2]
    with sessions.begin() as s:
        users.add_user(s, "cara", "long enough password", display_name="Cara C")
    return env


def test_every_user_has_mine_and_unassigned_urgent_counted_as_the_queue_shows(desk_env) -> None:
    store, desk, sessions, policy, clock = desk_env
    urgent = [open_wo(store, i, "server_down", "urgent") for i in range(1, 5)]
    normal = open_wo(store, 9, "new_account", "normal")
    desk.assign(urgent[0], "cara", "bob")
    desk.assign(normal, "cara", "bob")
    desk.resolve(urgent[1], "cara")  # resolved: in neither default
    desk.assign(urgent[3], "cara", "cara")
    got = counts(sessions, policy, clock)
    assert got == {MINE: 2, UNASSIGNED_URGENT: 1}
    assert counts(sessions, policy, clock, "cara") == {MINE: 1, UNASSIGNED_URGENT: 1}
    with sessions() as s:
        views = user_views(s, user_id(sessions, "bob"), "bob")
    for v in views:  # a view is a link to the queue, which shows the same number
        assert shown(sessions, policy, clock, v.args) == got[v.name]
    assert views[0].href == "/queue?assignee=bob"


def test_views_are_saved_renamed_and_deleted_per_user(desk_env) -> None:
    store, desk, sessions, policy, clock = desk_env
    a = open_wo(store, 1, "email_problem", "urgent", subject="Outlook keeps asking")
    open_wo(store, 2, "printer_setup", "normal", subject="New printer on floor 2")
    open_wo(store, 3, "email_problem", "high", subject="Outlook slow")
    desk.set_status(a, "bob", "waiting_client")
    bob, cara = user_id(sessions, "bob"), user_id(sessions, "cara")
    with sessions.begin() as s:
        mail = save_view(s, bob, "  Mail   problems ", {"type": "email_problem"}, policy)
        waiting = save_view(s, bob, "Waiting", {"status": "waiting_client"}, policy)
        # Every body says "Outlook is broken" (open_wo); the printer request too.
        words = save_view(s, bob, "Outlook", {"q": "outlook", "status": "all"}, policy)
        mail_id, waiting_id, words_id = mail.id, waiting.id, words.id
    assert mail.name == "Mail problems"  # white space folded
    got = counts(sessions, policy, clock)
    assert got == {MINE: 0, UNASSIGNED_URGENT: 1, "Mail problems": 2, "Outlook": 3,
                   "Waiting": 1}
    with sessions() as s:
        views = user_views(s, bob, "bob")
    for v in views:
        assert shown(sessions, policy, clock, v.args) == got[v.name], v.name
    # Names are unique per user, whatever the case, and the defaults' names are taken.
    for taken in ("mail problems", "MINE", "unassigned urgent"):
        with sessions.begin() as s, pytest.raises(ViewError, match="already have"):
            save_view(s, bob, taken, {}, policy)
    with sessions.begin() as s:  # another user may use the same name
        save_view(s, cara, "Mail problems", {"priority": "urgent"}, policy)
    assert counts(sessions, policy, clock, "cara")["Mail problems"] == 1
    # Rename, refilter, delete; another user's view is not found.
    with sessions.begin() as s:
        change_view(s, bob, mail_id, policy, name="Email")
        change_view(s, bob, waiting_id, policy, args={"status": "open"})
        delete_view(s, bob, words_id)
    assert counts(sessions, policy, clock) == {MINE: 0, UNASSIGNED_URGENT: 1, "Email": 2,
                                               "Waiting": 0}
    for call in (lambda s: change_view(s, cara, mail_id, policy, name="Mine now"),
                 lambda s: delete_view(s, cara, mail_id)):
        with sessions.begin() as s, pytest.raises(NotFound):
            call(s)
    with sessions.begin() as s, pytest.raises(ViewError, match="already have"):
        change_view(s, bob, waiting_id, policy, name="email")


@pytest.mark.parametrize("args, problem", [
    ({"type": "no_such_type"}, "unknown type"),
    ({"status": "closed"}, "unknown status"),
    ({"review": "maybe"}, "unknown review"),
    ({"colour": "red"}, "not a queue filter"),
    ({"q": "x" * 201}, "at most 200"),
])
def test_a_view_must_be_a_queue_filter(desk_env, args: dict[str, str], problem: str) -> None:
    _, _, sessions, policy, _ = desk_env
    with sessions.begin() as s, pytest.raises(ViewError, match=problem):
        save_view(s, user_id(sessions, "bob"), "odd", args, policy)
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(SavedView)) == 0


def test_names_and_the_number_of_views_are_bounded(desk_env) -> None:
    _, _, sessions, policy, _ = desk_env
    bob = user_id(sessions, "bob")
    for name in ("", "   ", "x" * 65):
        with sessions.begin() as s, pytest.raises(ViewError):
            save_view(s, bob, name, {}, policy)
    with sessions.begin() as s:
        for i in range(MAX_VIEWS):
            save_view(s, bob, f"view {i}", {}, policy)
    with sessions.begin() as s, pytest.raises(ViewError, match=f"at most {MAX_VIEWS}"):
        save_view(s, bob, "one more", {}, policy)


def test_a_view_the_policy_no_longer_fits_says_so_in_place_of_its_count(desk_env) -> None:
    store, _, sessions, policy, clock = desk_env
    open_wo(store, 1)
    bob = user_id(sessions, "bob")
    with sessions.begin() as s:
        s.add(SavedView(user_id=bob, name="Fax", filters={"type": "fax_machine"}))
    with sessions() as s:
        fax = next(v for v in navigation(s, bob, "bob", policy, clock.t) if v.name == "Fax")
    assert fax.count is None and "unknown type 'fax_machine'" in fax.problem


def test_the_defaults_are_counted_from_the_index_alone(desk_env) -> None:
    """The navigation counts on every page: "Mine" and "Unassigned urgent" read a range of
    migration 0017's index over the active work orders."""
    store, _, sessions, policy, clock = desk_env
    open_wo(store, 1)
    with sessions() as s:
        dialect = s.get_bind().dialect
        if dialect.name == "postgresql":  # one row and no statistics: make the choice visible
            s.execute(text("SET enable_seqscan = off"))
        for args in ({"assignee": "bob"}, {"assignee": "none", "priority": "urgent"}):
            stmt = total_statement(s, filter_from_args(args, policy), clock.t)
            sql = str(stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
            plan = " ".join(str(r[-1]) for r in s.execute(
                text(("EXPLAIN QUERY PLAN " if dialect.name == "sqlite" else "EXPLAIN ") + sql)))
            assert "ix_work_orders_active_assignee" in plan, plan
            if dialect.name == "sqlite":
                assert "COVERING INDEX" in plan, plan


# ---- bulk actions -----------------------------------------------------------------------------
def page_targets(sessions, numbers: list[str]) -> list[Target]:  # type: ignore[no-untyped-def]
    """The rows as the queue page sends them: each number with the version it showed."""
    return [Target(n, get(sessions, n).version) for n in numbers]


def test_bulk_assign_is_one_audited_action_per_row(desk_env) -> None:
    store, desk, sessions, policy, _ = desk_env
    numbers = [open_wo(store, i) for i in range(1, 8)]
    before = {n: get(sessions, n).version for n in numbers}
    result = run_bulk(desk, sessions, policy, "cara", BulkAction("assign", assignee="bob"),
                      page_targets(sessions, numbers))
    assert [(r.number, r.outcome) for r in result.rows] == [(n, "done") for n in numbers]
    assert (result.done, result.failed) == (7, 0)
    bob = user_id(sessions, "bob")
    for n in numbers:
        wo = get(sessions, n)
        assert wo.assignee_id == bob and wo.version == before[n] + 1
        assigned = [e for e in events(sessions, n) if e.action == "assigned"]
        assert [(e.actor, e.detail, e.wo_version) for e in assigned] == [
            ("cara", {"to": "bob"}, wo.version)]
    # Unassign them all again (an empty assignee), through the same action.
    run_bulk(desk, sessions, policy, "cara", BulkAction("assign", assignee=None),
             page_targets(sessions, numbers))
    assert all(get(sessions, n).assignee_id is None for n in numbers)


def test_a_row_changed_since_the_page_is_refused_and_the_others_go_through(desk_env) -> None:
    store, desk, sessions, policy, clock = desk_env
    numbers = [open_wo(store, i) for i in range(1, 5)]
    seen = page_targets(sessions, numbers)  # the queue page is loaded
    clock.t += timedelta(minutes=3)
    desk.note(numbers[1], "cara", "client called, on it")  # someone else acts meanwhile
    result = run_bulk(desk, sessions, policy, "bob", BulkAction("resolve"),
                      [*seen, Target("ITX-999999", 1)])
    outcome = {r.number: r for r in result.rows}
    assert [outcome[n].outcome for n in numbers] == ["done", "conflict", "done", "done"]
    assert "cara note" in outcome[numbers[1]].message
    assert "nothing was done" in outcome[numbers[1]].message
    assert outcome[numbers[1]].version == get(sessions, numbers[1]).version
    assert outcome["ITX-999999"].outcome == "not_found"
    assert (result.done, result.failed) == (3, 2)
    assert [get(sessions, n).status for n in numbers] == [
        "resolved", "new", "resolved", "resolved"]
    assert not [e for e in events(sessions, numbers[1]) if e.action == "resolved"]


def test_bulk_reclassify_keeps_what_was_not_chosen_and_keeps_corrections(desk_env) -> None:
    store, desk, sessions, policy, _ = desk_env
    a = open_wo(store, 1, "email_problem", "urgent")
    b = open_wo(store, 2, "printer_setup", "normal")
    result = run_bulk(desk, sessions, policy, "bob", BulkAction("reclassify", priority="high"),
                      page_targets(sessions, [a, b]))
    assert [r.outcome for r in result.rows] == ["done", "done"]
    assert [(get(sessions, n).request_type, get(sessions, n).priority) for n in (a, b)] == [
        ("email_problem", "high"), ("printer_setup", "high")]
    # Without versions (an API script): each row's own type is still the one kept.
    run_bulk(desk, sessions, policy, "bob", BulkAction("reclassify", request_type="server_down"),
             [Target(a), Target(b)])
    assert [(get(sessions, n).request_type, get(sessions, n).priority) for n in (a, b)] == [
        ("server_down", "high"), ("server_down", "high")]
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Correction)) == 4


def test_a_bulk_status_change_reports_rows_already_so(desk_env) -> None:
    store, desk, sessions, policy, _ = desk_env
    a, b = open_wo(store, 1), open_wo(store, 2)
    desk.set_status(b, "bob", "waiting_client")
    targets = page_targets(sessions, [a, b])
    result = run_bulk(desk, sessions, policy, "bob", BulkAction("status", status="waiting_client"),
                      targets)
    assert [(r.outcome, r.message) for r in result.rows] == [("done", ""),
                                                              ("unchanged", "already so")]
    assert get(sessions, b).version == targets[1].version  # no event, no new version
    assert (result.done, result.failed) == (1, 0)


@pytest.mark.parametrize("todo, count, problem", [
    (BulkAction("assign", assignee="nobody"), 1, "no active staff user"),
    (BulkAction("reclassify"), 1, "a request type, a priority or both"),
    (BulkAction("reclassify", request_type="fax"), 1, "unknown request type"),
    (BulkAction("status", status="closed"), 1, "unknown status"),
    (BulkAction("status"), 1, "choose a status"),
    (BulkAction("delete"), 1, "unknown bulk action"),
    (BulkAction("resolve"), 0, "no work orders selected"),
    (BulkAction("resolve"), MAX_ROWS + 1, f"at most {MAX_ROWS} work orders"),
])
def test_a_bulk_action_wrong_as_a_whole_touches_no_row(desk_env, todo: BulkAction, count: int,
                                                       problem: str) -> None:
    store, desk, sessions, policy, _ = desk_env
    n = open_wo(store, 1)
    with pytest.raises(BulkError, match=problem):
        run_bulk(desk, sessions, policy, "bob", todo, [Target(n)] * count)
    wo = get(sessions, n)
    assert (wo.version, wo.status, wo.assignee_id) == (1, "new", None)
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(WorkOrder)) == 1


def test_targets_are_parsed_and_bounded() -> None:
    assert parse_target("ITX-000123@4") == Target("ITX-000123", 4)
    assert parse_target(" ITX-000123 ") == Target("ITX-000123", None)
    for bad in ("ITX-12@4", "ITX-000123@", "ITX-000123@99999999999", "ITX-000123@0",
                "<script>", "ITX-000123@4x"):
        with pytest.raises(BulkError):
            parse_target(bad)
