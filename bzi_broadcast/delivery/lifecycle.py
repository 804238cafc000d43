"""Announcement and delivery states, and which announcement transitions are allowed."""

from __future__ import annotations

from enum import StrEnum


class AnnouncementStatus(StrEnum):
    DRAFT = "draft"
    IN_REVIEW = "in_review"  # an editor submitted it; a publisher (not the author) approves
    APPROVED = "approved"  # approved; a publisher schedules it
    SCHEDULED = "scheduled"
    SENDING = "sending"
    SENT = "sent"
    PARTIALLY_FAILED = "partially_failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class DeliveryStatus(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"  # claimed by a worker under a lease
    SENT = "sent"
    FAILED = "failed"
    CANCELLED = "cancelled"


A = AnnouncementStatus
TRANSITIONS: dict[AnnouncementStatus, frozenset[AnnouncementStatus]] = {
    A.DRAFT: frozenset({A.IN_REVIEW, A.SCHEDULED, A.CANCELLED}),  # SCHEDULED: the CLI's queue
    A.IN_REVIEW: frozenset({A.APPROVED, A.DRAFT, A.CANCELLED}),
    A.APPROVED: frozenset({A.SCHEDULED, A.DRAFT, A.CANCELLED}),
    A.SCHEDULED: frozenset({A.SENDING, A.CANCELLED, A.EXPIRED, A.DRAFT, A.SCHEDULED}),
    A.SENDING: frozenset({A.SENT, A.PARTIALLY_FAILED, A.CANCELLED, A.EXPIRED}),
    A.SENT: frozenset(),
    A.PARTIALLY_FAILED: frozenset({A.SENDING}),  # "retry failed" re-opens it
    A.CANCELLED: frozenset(),
    A.EXPIRED: frozenset(),
}
FINAL = frozenset({A.SENT, A.CANCELLED, A.EXPIRED})


def sources_of(target: AnnouncementStatus) -> frozenset[AnnouncementStatus]:
    """Every status from which ``target`` may be reached."""
    return frozenset(state for state, targets in TRANSITIONS.items() if target in targets)
