"""The storing rules alone: ``Decider`` on a hand-made context, no database (the writers
and the rules together are proved in test_workorders.py on SQLite and PostgreSQL)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.factories import NOW, ingest, mail, nonreq, req
from triage.sla import load_policy
from triage.store.context import BatchContext, WorkOrderView
from triage.store.decide import Decider, Rules
from triage.store.figures import SlaFigures
from triage.store.model import StoreConfig


@pytest.fixture
def rules(tmp_path: Path) -> Rules:
    policy = load_policy()
    return Rules(StoreConfig("helpdesk@itx.net", 2, tmp_path, 0.6), policy,
                 SlaFigures(policy, 0.75), lambda: NOW)


def resolved_work_order() -> WorkOrderView:
    return WorkOrderView(dict(
        id=7, number="ITX-000007", requester="dana@harborview.com", status="resolved",
        resolved_at=NOW, pauses=[], contract="standard", priority="urgent",
        request_type="email_problem", received_at=NOW, clock_start=NOW, response_due=NOW,
        client_key="harborview.com"))


def test_a_request_plans_a_work_order_its_message_and_an_ack(rules: Rules) -> None:
    ctx = BatchContext()
    plan = Decider(ctx, rules).decide(ingest(mail(1), req()))
    assert plan is not None and plan.outcome.disposition == "work_order" and plan.outcome.acked
    assert plan.client is not None and plan.client.key == "harborview.com"
    assert plan.new_work_order is not None and plan.message is not None
    assert plan.message.work_order is plan.new_work_order.ref
    (ack,) = plan.mails
    assert (ack.kind, ack.to_addr) == ("ack", "dana@harborview.com")
    assert [e.action for e in plan.events] == ["created"]
    # what the plan adds is remembered for the next message of the batch
    assert ctx.ack_counts == {"dana@harborview.com": 1} and ctx.opened == 1
    again = Decider(ctx, rules).decide(ingest(mail(2, mid="m1@harborview.com"), req()))
    assert again is not None and again.outcome.disposition == "duplicate"
    assert again.fetch is not None and again.fetch.message is plan.message.ref


def test_the_rate_limit_reads_the_context(rules: Rules) -> None:
    ctx = BatchContext(ack_counts={"dana@harborview.com": 2})
    plan = Decider(ctx, rules).decide(ingest(mail(1), req()))
    assert plan is not None and not plan.outcome.acked and plan.mails == []
    assert [e.action for e in plan.events] == ["created", "ack_suppressed"]


def test_a_reply_reopens_and_the_next_one_sees_it_open(rules: Rules) -> None:
    ctx = BatchContext(work_orders={7: resolved_work_order()}, numbers={"ITX-000007": 7})
    decider = Decider(ctx, rules)
    first = decider.decide(ingest(mail(1, subject="Re: [ITX-000007] still broken"), req()))
    assert first is not None and first.outcome.disposition == "reply"
    assert [e.action for e in first.events] == ["reopened", "client_reply"]
    (change,) = first.changes
    assert change.work_order_id == 7 and change.values["status"] == "open"
    assert change.values["next_due"] is not None  # the clocks run again
    thanks = decider.decide(ingest(mail(2, subject="Re: [ITX-000007]"), nonreq("thanks")))
    assert thanks is not None and [e.action for e in thanks.events] == ["client_reply"]


def test_each_reply_moves_the_version_once_and_its_events_name_it(rules: Rules) -> None:
    """The collision guard: a page made before a client's reply is refused, and the refusal
    lists the reply's events, so the change and every event carry the new version."""
    wo = resolved_work_order()
    wo.version = 4
    ctx = BatchContext(work_orders={7: wo}, numbers={"ITX-000007": 7})
    decider = Decider(ctx, rules)
    first = decider.decide(ingest(mail(1, subject="Re: [ITX-000007] still broken"), req()))
    assert first is not None
    assert [(e.action, e.wo_version) for e in first.events] == [
        ("reopened", 5), ("client_reply", 5)]
    assert first.changes[0].values["version"] == 5
    second = decider.decide(ingest(mail(2, subject="Re: [ITX-000007]"), nonreq("thanks")))
    assert second is not None  # the next reply of the batch builds on the first
    assert [(e.action, e.wo_version) for e in second.events] == [("client_reply", 6)]
    assert second.changes[0].values["version"] == 6
    created = Decider(BatchContext(), rules).decide(ingest(mail(3), req()))
    assert created is not None and [e.wo_version for e in created.events] == [None]


def test_a_message_that_may_answer_its_own_batch_is_decided_on_a_fresh_context(
        rules: Rules) -> None:
    ctx = BatchContext()
    decider = Decider(ctx, rules)
    assert decider.decide(ingest(mail(1), req())) is not None
    reply = ingest(mail(2, extra="In-Reply-To: <m1@harborview.com>\r\n"), req())
    assert decider.decide(reply) is None  # m1 is planned, not written: look again
    # A guessed tag while this batch opened work orders whose numbers are not known yet:
    assert decider.decide(ingest(mail(3, subject="[ITX-000001]"), req())) is None
    # Decided again once the context was looked up after the writes:
    assert decider.decide(reply, fresh=True) is not None


def test_own_mail_and_header_screened_mail_plan_no_work_order(rules: Rules) -> None:
    ctx = BatchContext(own={"m2@harborview.com"})
    decider = Decider(ctx, rules)
    for item, reason in ((ingest(mail(1, frm="helpdesk@itx.net"), req()), "own"),
                         (ingest(mail(2), req()), "own"),
                         (ingest(mail(3), nonreq("bounce")), "bounce")):
        plan = decider.decide(item)
        assert plan is not None and (plan.outcome.disposition, plan.outcome.reason) == (
            "non_request", reason)
        assert plan.new_work_order is None and plan.mails == []


def test_a_type_the_policy_refuses_is_quarantined_alone(rules: Rules) -> None:
    plan = Decider(BatchContext(), rules).decide(ingest(mail(1), req(label="no_such_type")))
    assert plan is not None and plan.outcome.disposition == "quarantined"
    assert (plan.outcome.reason or "").startswith("store failed: ")
    assert plan.message is not None and plan.message.values["disposition"] == "quarantined"
    assert plan.new_work_order is None and plan.client is None



def test_the_same_message_id_is_a_duplicate_only_with_the_same_fingerprint(rules: Rules) -> None:
    first = ingest(mail(1, mid="form@web.example"), req())
    assert first.fingerprint is not None
    ctx = BatchContext(messages={"mid:form@web.example": (41, first.fingerprint)})
    decider = Decider(ctx, rules)
    trace = "Received: from relay2.example by mx.itx.net\r\n"
    again = decider.decide(ingest(mail(2, mid="form@web.example", extra=trace), req()))
    assert again is not None and again.outcome.disposition == "duplicate"
    assert again.fetch is not None and again.fetch.message == 41
    other = decider.decide(ingest(mail(3, mid="form@web.example", body="other"), req()))
    assert other is not None and other.outcome.disposition == "work_order"
    assert other.message is not None and other.message.values["dedupe_key"].startswith("mid+fp:")
    reused = [e for e in other.events if e.action == "message_id_reused"]
    assert [(e.work_order, e.detail["earlier_message"]) for e in reused] == [
        (other.new_work_order.ref if other.new_work_order else None, 41)]


def test_the_rate_limits_read_normalised_keys_and_the_domain_and_global_counts(
        rules: Rules) -> None:
    spelt = ingest(mail(1, frm="Dana.Harbor+urgent@HarborView.com."), req())
    plan = Decider(BatchContext(ack_counts={"danaharbor@harborview.com": 2}), rules).decide(spelt)
    assert plan is not None and plan.outcome.ack_refused == "rate_address" and not plan.mails
    assert plan.events[-1].detail["reason"] == "rate_address"
    full_domain = BatchContext(ack_domain_counts={"harborview.com": 30})
    plan = Decider(full_domain, rules).decide(ingest(mail(2), req()))
    assert plan is not None and plan.outcome.ack_refused == "rate_domain"
    plan = Decider(BatchContext(ack_total=1000), rules).decide(ingest(mail(3), req()))
    assert plan is not None and plan.outcome.ack_refused == "rate_global"
    ctx = BatchContext(ack_total=999)
    plan = Decider(ctx, rules).decide(ingest(mail(4), req()))
    assert plan is not None and plan.outcome.acked and plan.outcome.ack_refused is None
    # what the plan adds is counted under the keys the limits read
    assert (ctx.ack_counts, ctx.ack_domain_counts, ctx.ack_total) == (
        {"dana@harborview.com": 1}, {"harborview.com": 1}, 1000)


def test_the_address_policy_applies_even_to_an_address_the_sender_reader_trusted(
        rules: Rules) -> None:
    """Defence in depth: a quoted list the From reader let through is still no recipient."""
    item = ingest(mail(1), req())
    assert item.parsed is not None
    odd = dataclasses.replace(item, parsed=dataclasses.replace(
        item.parsed, from_addr='"v1@a.test,v2@b.test"@x.test', from_problem=None))
    plan = Decider(BatchContext(), rules).decide(odd)
    assert plan is not None and plan.outcome.ack_refused == "multiple_addresses"
    assert plan.mails == [] and plan.events[-1].action == "ack_suppressed"


@pytest.mark.parametrize("kind", ["auto_reply", "bounce"])
def test_only_the_header_screen_skips_threading(rules: Rules, kind: str) -> None:
    """Rule 5 is for what the headers prove; the text model calling a client's reply an
    auto-reply or a bounce does not keep it off its work order (rule 6 comes first)."""
    ctx = BatchContext(work_orders={7: resolved_work_order()}, numbers={"ITX-000007": 7})
    reply = mail(1, subject="Re: [ITX-000007] out of office? no, still broken")
    by_model = Decider(ctx, rules).decide(ingest(reply, nonreq(kind, by_header=False)))
    assert by_model is not None and by_model.outcome.disposition == "reply"
    assert [e.action for e in by_model.events] == ["client_reply"]  # not a request: no reopen
    ctx = BatchContext(work_orders={7: resolved_work_order()}, numbers={"ITX-000007": 7})
    by_header = Decider(ctx, rules).decide(ingest(reply, nonreq(kind, by_header=True)))
    assert by_header is not None and (by_header.outcome.disposition,
                                      by_header.outcome.reason) == ("non_request", kind)
    assert by_header.message is not None and by_header.message.work_order is None
    # A model-screened one that threads nowhere is a non-request by rule 7.
    alone = Decider(BatchContext(), rules).decide(
        ingest(mail(2, subject="Undelivered?"), nonreq(kind, by_header=False)))
    assert alone is not None and (alone.outcome.disposition, alone.outcome.reason,
                                  alone.outcome.screened_by) == ("non_request", kind, "model")
