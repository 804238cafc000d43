"""The log setup: masking lives in the operations tests; here what is kept out as noise."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from bzi_broadcast.config import LoggingSettings
from bzi_broadcast.logs import configure


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    scheduler = logging.getLogger("apscheduler.scheduler")
    filters = list(scheduler.filters)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    scheduler.filters[:] = filters


@pytest.mark.usefixtures("restore_logging")
def test_an_overlapping_sweep_is_not_reported_but_other_scheduler_warnings_are() -> None:
    stream = io.StringIO()
    configure(LoggingSettings(format="text", level="INFO"), stream=stream)
    scheduler = logging.getLogger("apscheduler.scheduler")
    scheduler.warning(
        'Execution of job "Scheduler.sweep" skipped: maximum number of running instances '
        "reached (1)"
    )
    scheduler.warning('Run time of job "release-7" was missed by 0:00:03')
    written = stream.getvalue()
    assert "maximum number of running instances" not in written
    assert "was missed by" in written
