"""Announcements: the structured content staff write once."""

from bzi_broadcast.content.loader import load_announcement, parse_announcement
from bzi_broadcast.content.model import Announcement

__all__ = ["Announcement", "load_announcement", "parse_announcement"]
