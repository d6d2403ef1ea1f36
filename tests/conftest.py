"""Shared fixtures.

pytest, unlike trial, does not fail a test on "Unhandled error in Deferred";
the autouse fixture below watches the global log publisher and collects
garbage at teardown so such errors fail the test that caused them.
"""

from __future__ import annotations

import gc

import pytest
from twisted.logger import globalLogPublisher


@pytest.fixture(autouse=True)
def fail_on_unhandled_deferred_errors():
    errors: list[dict] = []

    def observer(event: dict) -> None:
        if event.get("log_failure") is not None and "Unhandled error in Deferred" in str(event.get("log_format", "")):
            errors.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        yield
        gc.collect()
    finally:
        globalLogPublisher.removeObserver(observer)
    if errors:
        failure = errors[0]["log_failure"]
        pytest.fail(f"unhandled error in Deferred: {failure.getTraceback()}")
