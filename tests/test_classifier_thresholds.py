"""Unequal costs, unequal thresholds: the decision policy of ``Classifier._decide`` and the
calibration that chooses its numbers (classifiers.calibrate), on a real trained model."""

from __future__ import annotations

import numpy as np
import pytest

from classifiers.calibrate import (
    fit_temperature,
    open_set_threshold,
    screen_threshold,
)
from classifiers.closing import closing_note, is_reply_subject
from classifiers.predict import Classifier
from classifiers.types import NOT_A_REQUEST, EmailInput

SPAM = EmailInput(subject="Special offer",
                  body="Limited time special offer, click here to unsubscribe. SEO audit.")


def _with(clf: Classifier, **meta: float) -> Classifier:
    return Classifier(None, {**clf.meta, **meta}, scorer=clf.scorer, path=clf._path)


def test_the_model_screens_only_above_the_screen_threshold(clf: Classifier) -> None:
    assert _with(clf, screen_threshold=0.0).classify(SPAM).label == NOT_A_REQUEST
    d = _with(clf, screen_threshold=1.01).classify(SPAM)
    # Not sure enough to hide it: the best request type opens a work order, for review.
    assert d.label != NOT_A_REQUEST and d.is_request
    assert d.needs_review and d.review_note and "may not be a request" in d.review_note
    assert d.non_request_kind is None and d.priority is not None


def test_header_proven_automation_stays_decisive(clf: Classifier) -> None:
    auto = EmailInput(subject="Out of office", body="back monday",
                      headers={"Auto-Submitted": "auto-replied"})
    d = _with(clf, screen_threshold=1.01).classify(auto)
    assert d.label == NOT_A_REQUEST and d.screened_by == "header"


def test_no_confident_type_means_other_for_review(clf: Classifier) -> None:
    mail = EmailInput(subject="new printer", body="Please set up the new printer at reception.")
    plain = _with(clf, open_set_threshold=0.0).classify(mail)
    assert plain.label not in ("other", NOT_A_REQUEST)
    d = _with(clf, open_set_threshold=1.01).classify(mail)
    assert d.label == "other" and d.needs_review
    assert d.review_note and "no type is confident" in d.review_note


def test_open_set_keeps_an_outage_urgent(clf: Classifier) -> None:
    mail = EmailInput(subject="server down", body="The server is down, nobody can log in.")
    d = _with(clf, open_set_threshold=1.01).classify(mail)
    assert d.label == "other" and d.priority == "urgent"


def test_temperature_spreads_confidence_without_changing_the_choice(
        clf: Classifier) -> None:
    mail = EmailInput(subject="locked out", body="I am locked out, please reset my password.")
    a, b = _with(clf, temperature=1.0).classify(mail), _with(clf, temperature=3.0).classify(mail)
    assert a.label == b.label and b.confidence < a.confidence
    p = np.array([0.7, 0.2, 0.1])
    assert np.isclose(_with(clf, temperature=2.0).calibrated(p).sum(), 1.0)


def test_fit_temperature_finds_overconfidence() -> None:
    rng = np.random.default_rng(1)
    # Says 0.99 but is right only 60 % of the time: the fitted temperature must be > 1.
    n = 400
    y = np.where(rng.random(n) < 0.6, 0, 1)
    proba = np.tile([0.99, 0.01], (n, 1))
    assert fit_temperature(proba, y) > 1.5
    # Right every time at 0.6: sharpen (T < 1).
    assert fit_temperature(np.tile([0.6, 0.4], (n, 1)), np.zeros(n, dtype=int)) < 1.0


def test_screen_threshold_is_raised_past_a_confident_mistake() -> None:
    conf = np.array([0.99, 0.97, 0.95, 0.90, 0.80])
    truly = np.array([True, True, False, True, True])
    # From the top: 2/2, then 2/3 < 0.98; only 0.97 keeps the precision.
    assert screen_threshold(conf, truly, precision=0.98, floor=0.0) == pytest.approx(0.97)
    assert screen_threshold(conf, np.ones(5, bool), precision=0.98, floor=0.0) == 0.8
    assert screen_threshold(conf, np.ones(5, bool), precision=0.98, floor=0.85) == 0.85


def test_open_set_threshold_sits_where_other_gains_most() -> None:
    conf = np.array([0.2, 0.22, 0.25, 0.3, 0.6, 0.8, 0.9])
    correct = np.array([False, False, False, True, True, True, True])
    other = np.array([True, True, True, False, False, False, False])
    # Moving the three lowest to other wins three; moving 0.3 as well would lose one.
    assert open_set_threshold(conf, correct, other) == pytest.approx(0.25)
    # A gain of two is noise: no fallback.
    assert open_set_threshold(conf[1:], correct[1:], other[1:]) == 0.0
    assert open_set_threshold(conf, np.ones(7, bool), np.zeros(7, bool)) == 0.0


@pytest.mark.parametrize("subject,body", [
    ("Re: [ITX #48213] website down", "It's back up, thanks!"),
    ("RE: Ticket#123456 outlook", "That fixed it. You can close this."),
    ("Re: [#5512] printer", "thank you so much for the quick help"),
    ("Re: mail not syncing", "working again, thx\n\nOn Tue, Bob wrote:\n> mail is down"),
    ("Thanks!", "all sorted now"),
    ("Re: site down", "Site's back up, looks great. Thanks for jumping on it so fast. No need "
                      "to call."),
])
def test_a_closing_note_is_thanks(subject: str, body: str) -> None:
    assert closing_note(EmailInput(subject=subject, body=body)) is not None


@pytest.mark.parametrize("subject,body", [
    ("Re: [ITX #48213] website down", "still down, any update?"),
    ("Re: mail", "thanks, but it doesn't work on my phone"),
    ("Re: ticket", "Thanks - could you also reset Bob's password?"),
    ("Re: server", "Ideally this can be resolved on Monday. Thanks"),
    ("New printer", "thanks"),
    ("Re: invoice", "Thanks. Please cancel the web hosting from January."),
    ("Re: laptop", "thank you! we also need one for the new hire"),
])
def test_a_request_that_thanks_is_no_closing_note(subject: str, body: str) -> None:
    assert closing_note(EmailInput(subject=subject, body=body)) is None


def test_closing_note_screens_before_the_model(clf: Classifier) -> None:
    d = clf.classify(EmailInput(subject="Re: [ITX #48213] website is down",
                                body="It is back up, thanks!"))
    assert d.label == NOT_A_REQUEST and d.non_request_kind == "thanks"
    assert d.screened_by == "closing_note"


def test_reply_subjects() -> None:
    for s in ("Re: x", "RE: RE: x", "AW: x", "[ITX #5123] x", "Ticket#88 x", "[#904] x",
              "[ITX-000123] x"):
        assert is_reply_subject(s), s
    assert not is_reply_subject("Website down")
