"""The Classifier as the service uses it: load, classify one or many, decide priority."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from classifiers.artifact import DEFAULT_MODEL_PATH
from classifiers.predict import Classifier, priority_for
from classifiers.types import LABELS, NOT_A_REQUEST, Decision, EmailInput

ROOT = Path(__file__).resolve().parent.parent
TRAINING = ROOT / "data" / "training"


@pytest.fixture(scope="module")
def samples() -> list[EmailInput]:
    out = []
    for f in sorted(TRAINING.glob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines()[-8:]:
            r = json.loads(line)
            out.append(EmailInput(r["subject"], r["body"], r["from"], r["headers"]))
    return out


def test_decision_is_well_formed(clf: Classifier) -> None:
    d = clf.classify(
        EmailInput(
            subject="Locked out",
            body="I am locked out of the remote desktop, please reset my password.",
            sender="Ann <ann@example.com>",
        )
    )
    assert isinstance(d, Decision)
    assert d.label == "password_reset"
    assert 0.0 <= d.confidence <= 1.0
    assert d.priority == "urgent"
    assert d.model_version == clf.version != ""
    assert d.screened_by is None
    sources = {e.source for e in d.evidence}
    assert "rule" in sources and "model" in sources
    assert any("locked out" in e.text for e in d.evidence)


def test_workaround_lowers_urgent_to_high(clf: Classifier) -> None:
    d = clf.classify(
        EmailInput(
            subject="Locked out",
            body="I'm locked out of my email, please reset my password. "
            "I can still read mail on my phone for now, so no rush.",
        )
    )
    assert d.label == "password_reset"
    assert "workaround" in d.cues
    assert d.priority == "high"


def test_priority_rule() -> None:
    table = {"password_reset": "urgent", "quickbooks_print": "high", "other": "normal"}
    assert priority_for("password_reset", (), table) == "urgent"
    assert priority_for("password_reset", ("workaround",), table) == "high"
    assert priority_for("quickbooks_print", ("workaround",), table) == "high"
    assert priority_for("other", ("urgency",), table) == "normal"
    assert priority_for(NOT_A_REQUEST, (), table) is None


def test_header_screen_decides_before_the_model(clf: Classifier) -> None:
    d = clf.classify(
        EmailInput(
            subject="Re: server down",
            body="Our server is down, please call",
            headers={"Auto-Submitted": "auto-replied"},
        )
    )
    assert d.label == NOT_A_REQUEST
    assert d.non_request_kind == "auto_reply"
    assert d.screened_by == "header"
    assert d.priority is None
    assert d.evidence[0].source == "header"


def test_single_and_batch_paths_agree(clf: Classifier, samples: list[EmailInput]) -> None:
    """classify() skips scikit-learn's per-call machinery; it must give the pipeline's answer."""
    batch = clf.classify_many(samples)
    for email, b in zip(samples, batch, strict=True):
        one = clf.classify(email)
        assert one.label == b.label
        assert one.confidence == pytest.approx(b.confidence, abs=1e-3)
        assert one.priority == b.priority
        assert one.cues == b.cues
        assert [e.text for e in one.evidence] == [e.text for e in b.evidence]


def test_fast_probabilities_equal_predict_proba(clf: Classifier, samples: list[EmailInput]) -> None:
    from classifiers.features import prepare

    texts = [prepare(e) for e in samples]
    expected = clf.pipe.predict_proba(texts)
    assert clf.scorer is not None
    rows = [clf.scorer.features(t, clf.rules.match(t)) for t in texts]
    for (idx, vals), row in zip(rows, expected, strict=True):
        np.testing.assert_allclose(clf.scorer.proba(idx, vals), row, atol=1e-9)
    np.testing.assert_allclose(clf.scorer.proba_many(rows), expected, atol=1e-9)


def test_the_loaded_classifier_runs_on_the_saved_scorer(model_path: Path,
                                                        samples: list[EmailInput]) -> None:
    """Training writes the compiled scorer; loading uses it (no pipeline loaded), and its
    analyzers reproduce scikit-learn's term by term."""
    from classifiers.features import prepare
    from classifiers.scorer import scorer_path

    clf = Classifier.load(model_path)
    assert scorer_path(model_path).exists() and "scorer_sha256" in clf.meta
    assert clf._pipe is None  # loaded from the scorer file alone
    texts = [prepare(e) for e in samples]
    steps = dict(clf.pipe.named_steps["features"].transformer_list)
    assert clf.scorer is not None
    for part, name in zip(clf.scorer.parts, ("words", "chars"), strict=True):
        analyze = steps[name].build_analyzer()
        for t in [*texts, "", "  x  ", "a b\tc\n\nd", "don't re-use h202 é ü"]:
            assert part.analyze(t) == analyze(t)
            get = steps[name].vocabulary_.get
            assert part.columns(t) == [c for c in map(get, analyze(t)) if c is not None]
    np.testing.assert_allclose(
        clf.scorer.proba_many([clf.scorer.features(t, clf.rules.match(t)) for t in texts]),
        clf.pipe.predict_proba(texts), atol=1e-9)


def test_a_torn_scorer_falls_back_to_the_pipeline(model_path: Path, tmp_path: Path,
                                                 samples: list[EmailInput]) -> None:
    import shutil

    from classifiers.artifact import meta_path
    from classifiers.scorer import scorer_path

    copy = tmp_path / "model.skops"
    for src in (model_path, meta_path(model_path), scorer_path(model_path)):
        shutil.copy(src, tmp_path / src.name)
    scorer_path(copy).write_bytes(scorer_path(copy).read_bytes()[:-10])
    torn = Classifier.load(copy)
    assert torn._pipe is not None  # the pipeline was loaded instead
    good = Classifier.load(model_path)
    assert [d.label for d in torn.classify_many(samples)] == \
        [d.label for d in good.classify_many(samples)]


def test_prediction_does_not_import_scikit_learn(model_path: Path) -> None:
    """The daemon's ingest worker classifies with numpy alone (~90 MB less resident)."""
    import subprocess
    import sys

    code = ("import sys; from classifiers.predict import Classifier; from classifiers.types "
            "import EmailInput; c = Classifier.load(sys.argv[1]); "
            "print(c.classify(EmailInput('locked out', 'please reset my password')).label); "
            "print(sorted(m for m in ('sklearn', 'scipy', 'skops') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(model_path)], capture_output=True,
                         text=True, check=True, cwd=ROOT).stdout.split("\n")
    assert out[1] == "[]", out


def test_models_without_a_fast_path_use_the_pipeline(
    clf: Classifier, samples: list[EmailInput]
) -> None:
    from classifiers.features import load_keywords, prepare
    from classifiers.pipeline import build_pipeline

    svm = build_pipeline(load_keywords(), model="svm")
    labels = [d.label for d in clf.classify_many(samples)]
    svm.fit([prepare(e) for e in samples], labels)
    other = Classifier(svm, {"model_version": "svm-test"})
    assert other.scorer is None
    one = other.classify(samples[0])
    many = other.classify_many(samples[:3])
    assert one.label == many[0].label
    assert one.confidence == pytest.approx(many[0].confidence)


def test_classify_many_keeps_order_with_screened_mail(clf: Classifier) -> None:
    emails = [
        EmailInput(subject="new printer", body="Please set up our new printer"),
        EmailInput(subject="news", body="sale", headers={"List-Id": "<x.example.com>"}),
        EmailInput(subject="locked out", body="please reset my password"),
    ]
    out = clf.classify_many(emails)
    assert [d.label for d in out][1] == NOT_A_REQUEST
    assert out[1].non_request_kind == "bulk"
    assert out[0].label != NOT_A_REQUEST and out[2].label == "password_reset"
    assert clf.classify_many([]) == []


@pytest.mark.parametrize(
    "email",
    [
        EmailInput(),
        EmailInput(subject="", body="   \n\n  "),
        EmailInput(subject="x", body="server down again " * 60_000),
        EmailInput(subject="\udcff\udcfe", body=b"\xff\xfe\x00\x81bad".decode("latin-1")),
        EmailInput(html="<html><style>p{}</style><p>Our website is down</p>"),
        EmailInput(html="<p><<<>>> unclosed <div"),
        EmailInput(body="hello", headers={"Content-Type": None}),  # type: ignore[dict-item]
        EmailInput(body="> only a quote"),
    ],
)
def test_bad_input_gets_a_decision(clf: Classifier, email: EmailInput) -> None:
    for d in (clf.classify(email), clf.classify_many([email])[0]):
        assert d.label in LABELS
        assert 0.0 <= d.confidence <= 1.0


def test_empty_mail_needs_review(clf: Classifier) -> None:
    assert clf.classify(EmailInput()).needs_review


def test_html_only_mail_is_read(clf: Classifier) -> None:
    d = clf.classify(EmailInput(html="<p>Please <b>reset my password</b>, I am locked out</p>"))
    assert d.label == "password_reset"


def test_packaged_model_classifies_without_training() -> None:
    if not DEFAULT_MODEL_PATH.exists():
        pytest.fail(f"no packaged model at {DEFAULT_MODEL_PATH}; run `triage train`")
    clf = Classifier.load()
    d = clf.classify(EmailInput(subject="Website down", body="Our website is down, error 503."))
    assert d.label == "website_down"
    assert d.priority == "urgent"
    assert set(clf.meta["labels"]) == set(LABELS)


_header_names = st.sampled_from(
    ["Auto-Submitted", "Precedence", "List-Id", "Return-Path", "Content-Type", "X-Mailer", "From"]
)


@settings(max_examples=150, deadline=None)
@given(
    subject=st.text(max_size=200),
    body=st.text(max_size=2000),
    html=st.none() | st.text(max_size=500),
    sender=st.text(max_size=80),
    headers=st.dictionaries(_header_names, st.text(max_size=60), max_size=4),
)
def test_any_input_gets_a_decision(
    clf: Classifier, subject: str, body: str, html: str | None, sender: str, headers: dict
) -> None:
    email = EmailInput(subject=subject, body=body, sender=sender, headers=headers, html=html)
    d = clf.classify(email)
    assert d.label in LABELS
    assert 0.0 <= d.confidence <= 1.0
    assert (d.priority is None) == (d.label == NOT_A_REQUEST)
    assert clf.classify_many([email])[0].label == d.label
