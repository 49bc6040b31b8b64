"""Plain data in and out of the classifier; the service talks to it only through these."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

REQUEST_TYPES: tuple[str, ...] = (
    "password_reset",
    "company_file_error",
    "website_down",
    "server_down",
    "email_problem",
    "new_account",
    "quickbooks_print",
    "software_install",
    "virtual_server_setup",
    "physical_server_setup",
    "post_office_setup",
    "printer_setup",
    "other",
)
NOT_A_REQUEST = "not_a_request"
LABELS: tuple[str, ...] = (*REQUEST_TYPES, NOT_A_REQUEST)

# Why a message is not a request; ``screened_by`` carries one of these.
NON_REQUEST_KINDS: tuple[str, ...] = ("auto_reply", "bounce", "bulk", "spam", "thanks", "own")


@dataclass(frozen=True)
class EmailInput:
    """What the classifier sees of one email. ``headers`` keys are matched case-insensitively."""

    subject: str = ""
    body: str = ""
    sender: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    html: str | None = None  # used only when ``body`` is empty (HTML-only mail)


@dataclass(frozen=True)
class Evidence:
    """One reason for the decision, shown to staff: a keyword rule or a model feature."""

    source: str  # "rule", "model" or "header"
    text: str  # the phrase, n-gram or header that matched
    weight: float


@dataclass(frozen=True)
class Decision:
    label: str  # one of LABELS
    confidence: float  # calibrated probability of ``label``, 0..1
    priority: str | None  # "urgent" | "high" | "normal"; None for not_a_request
    needs_review: bool
    non_request_kind: str | None = None  # one of NON_REQUEST_KINDS when label is not_a_request
    cues: tuple[str, ...] = ()  # e.g. ("workaround",), ("urgency",)
    evidence: tuple[Evidence, ...] = ()
    model_version: str = ""
    # Who screened it out before the text model: "header" (RFC 3834 and kin) or
    # "closing_note" (a reply that only thanks or confirms a fix).
    screened_by: str | None = None
    review_note: str | None = None  # why staff should look, in words (shown on the work order)
    # For a not_a_request decision of the model: the request type it rated highest, and that
    # type's probability (the default when staff open the message as a work order anyway).
    best_request: str | None = None
    best_request_confidence: float | None = None

    @property
    def is_request(self) -> bool:
        return self.label != NOT_A_REQUEST
