"""workers.run.policy: the one table every runner consults after an error."""

from __future__ import annotations

import pytest

from workers.errors import ConfigError, DeviceOutOfMemoryError, StorageUnavailableError
from workers.run.policy import Decision, backoff_s, decide
from workers.settings import Settings

SETTINGS = Settings(task_max_retries=3, task_max_errors=2)


class OutageError(Exception):
    """Stands in for what a runtime adds to the transient errors (a Redis outage)."""


# One case per line: the table reads as the policy.
# fmt: off
CASES = [
    # error, retries so far, errors counted (this one included), stops, -> decision
    (StorageUnavailableError("S3 down"), 0, 0, False, Decision("retry", 2)),
    (StorageUnavailableError("S3 down"), 2, 0, False, Decision("retry", 8)),
    (StorageUnavailableError("S3 down"), 3, 0, False, Decision("fail", reason="gave up after 4 transient errors: S3 down")),
    (DeviceOutOfMemoryError("out of memory even with 64-pixel tiles"), 3, 0, True, Decision("fail", reason="gave up after 4 transient errors: out of memory even with 64-pixel tiles")),
    (OutageError("Redis down"), 1, 0, False, Decision("retry", 4)),
    (ValueError("a bug"), 0, 1, False, Decision("retry", 2)),
    (ValueError("a bug"), 1, 2, False, Decision("fail", reason="unexpected error (2 times, at denoise): ValueError: a bug")),
    (ValueError("a bug"), 3, 1, False, Decision("fail", reason="unexpected error (once, at denoise): ValueError: a bug")),
    (ConfigError("AccessDenied"), 0, 1, False, Decision("retry", 2)),
    (ConfigError("AccessDenied"), 1, 2, False, Decision("fail", reason="unexpected error (2 times, at denoise): ConfigError: AccessDenied")),
    (ConfigError("AccessDenied"), 0, 1, True, Decision("stop", reason="ConfigError: AccessDenied")),
]
# fmt: on


@pytest.mark.parametrize(
    ("error", "retries", "errors", "stops", "expected"),
    CASES,
    ids=[f"{type(c[0]).__name__}-r{c[1]}-e{c[2]}{'-stops' if c[3] else ''}" for c in CASES],
)
def test_the_policy_table(error, retries, errors, stops, expected):
    transient = (StorageUnavailableError, DeviceOutOfMemoryError, OutageError)
    assert (
        decide(
            error, retries=retries, errors=errors, settings=SETTINGS, stage="denoise", transient=transient, stops=stops
        )
        == expected
    )


def test_backoff_doubles_up_to_a_minute():
    assert [backoff_s(r) for r in range(8)] == [2, 4, 8, 16, 32, 60, 60, 60]
