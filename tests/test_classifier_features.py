"""Text preparation and keyword rules: what the model and staff see of an email."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from classifiers.features import (
    KeywordFeatures,
    KeywordRules,
    email_text,
    html_to_text,
    load_keywords,
    normalise,
    prepare,
    strip_quotes,
    strip_signature,
)
from classifiers.types import LABELS, EmailInput


def test_html_to_text_drops_script_and_style_and_keeps_blocks() -> None:
    markup = (
        "<html><head><title>t</title><style>p {color: red}</style></head>"
        "<body><p>Our website is down</p><script>alert('x')</script>"
        "<div>since&nbsp;9am &amp; still</div></body></html>"
    )
    text = html_to_text(markup)
    assert "website is down" in text
    assert "since\xa09am & still" in text
    assert "alert" not in text and "color" not in text
    assert text.index("down") < text.index("since")
    assert "\n" in text[text.index("down") : text.index("since")]


def test_html_only_mail_is_classified_on_its_text() -> None:
    _, body = email_text(EmailInput(html="<p>Printer <b>jammed</b></p>"))
    assert "Printer jammed" in body


def test_strip_quotes_drops_reply_history() -> None:
    body = (
        "Still can't get in, please reset again.\n\n-Ken\n\n"
        "> On Tue, ITX Helpdesk <helpdesk@itx.net> wrote:\n> we reset your password"
    )
    assert "we reset your password" not in strip_quotes(body)
    assert "reset again" in strip_quotes(body)


@pytest.mark.parametrize(
    "separator",
    [
        "-----Original Message-----\nFrom: ITX Helpdesk\nSent: Tuesday",
        "On Mon, Feb 10, 2025 at 9:02 AM, ITX Billing <billing@itx.net> wrote:",
        "From: ITX Helpdesk <helpdesk@itx.net>\nSent: Tuesday, March 4, 2025 2:11 PM",
        "________________________________\nFrom: someone",
    ],
)
def test_strip_quotes_recognises_client_separators(separator: str) -> None:
    body = f"We need a new printer set up.\n\n{separator}\nold text about a server outage"
    out = strip_quotes(body)
    assert "new printer" in out
    assert "server outage" not in out


def test_forward_under_a_short_cover_note_keeps_the_forwarded_request() -> None:
    body = (
        "ITX can you do this? thanks\n\n---------- Forwarded message ---------\n"
        "From: HR <hr@example.com>\nDate: Thu, Jan 16, 2025\nSubject: checklist\n\n"
        "New hire needs an email account"
    )
    out = strip_quotes(body)
    assert "email account" in out
    assert "hr@example.com" not in out


def test_message_that_is_only_a_quote_keeps_its_text() -> None:
    assert "printer" in strip_quotes("> please set up the new printer")


def test_signature_and_disclaimer_are_cut() -> None:
    body = (
        "Please reset my password.\n\n--\nDana Whitfield\nOffice Manager\n\n"
        "CONFIDENTIALITY NOTICE: This e-mail and any attachments are confidential."
    )
    out = strip_signature(body)
    assert out.strip() == "Please reset my password."
    mobile = strip_signature("server is down\n\nSent from my iPhone")
    assert mobile.strip() == "server is down"
    disclaimer = strip_signature(
        "New mailbox please.\nThis email is for the intended recipient only. Blah."
    )
    assert "intended recipient" not in disclaimer


def test_ordinary_sentences_about_this_email_are_kept() -> None:
    body = "Hi,\n\nThis email is to ask for a new printer.\nThis message is urgent."
    assert strip_signature(body) == body


def test_disclaimer_alone_is_not_cut_to_nothing() -> None:
    assert strip_signature("Disclaimer: nothing else here").strip()


def test_prepare_is_lowercase_subject_then_body_and_bounded() -> None:
    text = prepare(EmailInput(subject="Server DOWN", body="Can’t connect " * 100_000))
    assert text.startswith("server down\n")
    assert "can't connect" in text  # typographic apostrophe folded
    assert len(text) < 10_000


def test_keyword_rules_match_phrases_on_word_boundaries() -> None:
    rules = KeywordRules.from_dict(
        {
            "types": {"password_reset": {"locked out": 2.0, "reset": 1.0}},
            "cues": {"workaround": {"threshold": 1.0, "for now": 1.0}},
        }
    )
    hits = rules.match("i am locked\n  out, please reset. resetting reset")
    phrases = sorted((h.phrase, h.group) for h in hits)
    assert phrases == [("locked out", "password_reset"), ("reset", "password_reset")]
    assert rules.label_scores(hits)[LABELS.index("password_reset")] == 3.0
    assert rules.cues(hits) == ()


def test_workaround_cue_and_its_negation() -> None:
    rules = KeywordRules.from_toml()
    with_workaround = rules.match(prepare(EmailInput(body="Using my phone for now, no rush.")))
    assert "workaround" in rules.cues(with_workaround)
    none = rules.match(prepare(EmailInput(body="There is no workaround, we can't work.")))
    assert "workaround" not in rules.cues(none)
    urgent = rules.match(prepare(EmailInput(body="URGENT: server down, clients waiting")))
    assert "urgency" in rules.cues(urgent)
    calm = rules.match(prepare(EmailInput(body="Not urgent at all.")))
    assert "urgency" not in rules.cues(calm)


def test_shipped_keywords_file_names_only_known_labels() -> None:
    doc = load_keywords()
    assert set(doc["types"]) <= set(LABELS)
    assert {"workaround", "urgency"} <= set(doc["cues"])


def test_unknown_label_in_keywords_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "kw.toml"
    bad.write_text('[types.coffee_machine]\n"espresso" = 1.0\n')
    with pytest.raises(ValueError, match="coffee_machine"):
        load_keywords(bad)


def test_keyword_features_transformer_gives_one_column_per_label() -> None:
    kf = KeywordFeatures(rules={"types": {"printer_setup": {"new printer": 2.0}}}, scale=0.5)
    X = kf.fit(["x"]).transform(["we bought a new printer", "nothing here"]).toarray()
    assert X.shape == (2, len(LABELS))
    assert X[0, LABELS.index("printer_setup")] == 1.0
    assert X[1].sum() == 0.0


def _reference_match(rules: KeywordRules, text: str) -> list[tuple[str, str, float]]:
    """What ``match`` promises: the phrase alternation scanned over every position."""
    c = rules._compile()
    requires, negated = rules._context_patterns()
    seen: set[tuple[str, str]] = set()
    out = []
    for m in c.pattern.finditer(text):
        phrase = normalise(m.group(0))
        for g, w in c.index.get(phrase, ()):
            if (phrase, g) in seen:
                continue
            if g in requires and not requires[g].search(text):
                continue
            if g in negated and negated[g].search(text[max(0, m.start() - 60):m.start()]):
                continue
            seen.add((phrase, g))
            out.append((phrase, g, w))
    return out


def _groups(text: str) -> set[str]:
    return {h.group for h in _RULES.match(text)}


def test_quickbooks_printing_rules_need_quickbooks() -> None:
    assert "quickbooks_print" not in _groups("our office printer is not printing since monday")
    assert "quickbooks_print" in _groups("quickbooks is not printing since monday")
    assert "quickbooks_print" in _groups("qb won't print the deposit slips")


def test_thanks_cues_need_something_done_and_no_hedge() -> None:
    assert "nr:thanks" not in _groups("ideally this can be resolved on monday")
    assert "nr:thanks" not in _groups("please add a mailbox for tom. thanks for your help")
    assert "nr:thanks" in _groups("that fixed it, thanks for your help")
    assert "nr:thanks" not in _groups("it's not working now")
    assert "nr:thanks" in _groups("works now, cheers")


def test_negated_outage_words_are_no_urgency() -> None:
    assert "cue:urgency" not in _groups("everything is no longer down")
    assert "cue:urgency" in _groups("everything is down")


def test_password_in_passing_is_no_password_reset() -> None:
    assert "password_reset" not in _groups("the new printer needs the wifi password")
    assert "password_reset" not in _groups("please send me the temporary password for her")
    assert "password_reset" in _groups("i need a password reset")


def test_context_names_an_unknown_group_is_refused() -> None:
    doc = {"types": {"other": {"x": 1.0}}, "context": {"requires": {"nonesuch": ["y"]}}}
    with pytest.raises(ValueError, match="nonesuch"):
        KeywordRules.from_dict(doc)


_RULES = KeywordRules.from_toml()
_PHRASES = sorted({p for g in _RULES.groups.values() for p in g})


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.sampled_from(_PHRASES),
    st.sampled_from(["error", "can't", "it's", "the", "e", "x", "qb", "6000", "_", "é"]),
    st.sampled_from([" ", "  ", "\n", "-", "'", ".", ",", "/", "(", ")", "x"]),
    st.text(max_size=5)), max_size=40))
def test_keyword_match_finds_what_a_full_scan_finds(pieces: list[str]) -> None:
    text = "".join(pieces).lower()
    got = [(h.phrase, h.group, h.weight) for h in _RULES.match(text)]
    assert got == _reference_match(_RULES, text)


def test_keyword_match_on_the_training_corpus_is_the_full_scan() -> None:
    folder = Path(__file__).parent.parent / "data" / "training"
    texts = [normalise(line) for f in sorted(folder.glob("*.jsonl"))
             for line in f.read_text(encoding="utf-8").splitlines()[:200]]
    assert len(texts) > 100
    assert sum(bool(_RULES.match(t)) for t in texts) > 50  # the rules do fire here
    for t in texts:
        assert [(h.phrase, h.group, h.weight) for h in _RULES.match(t)] == \
            _reference_match(_RULES, t)


def test_a_reply_subject_weighs_half_the_body() -> None:
    fresh = {h.phrase: h.weight for h in _RULES.match("website is down\nplease look")}
    reply = {h.phrase: h.weight for h in _RULES.match("re: website is down\nits back, thanks")}
    body = {h.phrase: h.weight for h in _RULES.match("hello\nwebsite is down")}
    assert reply["website is down"] == fresh["website is down"] / 2
    assert body["website is down"] == fresh["website is down"]
    tagged = {h.phrase: h.weight for h in _RULES.match("[itx #48213] website is down\nok")}
    assert tagged["website is down"] == fresh["website is down"] / 2
