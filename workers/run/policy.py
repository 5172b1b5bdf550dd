"""What happens after an error, decided in one place for every way of running: the embedded runner,
the image tasks, aggregation, calibration and training all ask :func:`decide`.

| the error | so far | decision |
| --- | --- | --- |
| transient (storage unreachable, device out of memory, a Redis outage) | ``retries`` < TASK_MAX_RETRIES | retry after :func:`backoff_s`: 2, 4, 8, ... 60 s |
| transient | ``retries`` = TASK_MAX_RETRIES | fail: ``gave up after N transient errors: <error>`` |
| a configuration error, where someone can act on it now (``stops``: the embedded command, a training job, a calibration) | - | stop: raise it, one line |
| any other (a bug, ``cv2.error``; a configuration error a worker meets on an image) | ``errors`` < TASK_MAX_ERRORS and ``retries`` < TASK_MAX_RETRIES | retry after :func:`backoff_s` |
| any other | ``errors`` = TASK_MAX_ERRORS, or ``retries`` = TASK_MAX_RETRIES | fail: ``unexpected error (N times, at STAGE): Type: message`` |

``retries``: how many times this work was retried before (a message's ``retries``; the embedded
runner counts the same). ``errors``: the unexpected errors counted so far, this one included (an
image's attempts record, :mod:`workers.run.attempts`; work without one counts its attempts). A
worker death is not an error: deaths fail an image at MAX_WORKER_DEATHS (the claim decides that). A
lost device (:class:`~workers.errors.DeviceLostError`) is nobody's failure and never comes here: the
images go back as they came.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from workers.errors import ConfigError, TransientError
from workers.run.attempts import describe_error
from workers.settings import Settings

BACKOFF_MAX_S = 60  # keep well under the visibility timeout: a waiting retry is unacknowledged
TRANSIENT: tuple[type[BaseException], ...] = (TransientError,)


def backoff_s(retries: int) -> int:
    """Seconds before retry number ``retries + 1``: 2, 4, 8, ... capped at BACKOFF_MAX_S."""
    return min(2 ** (retries + 1), BACKOFF_MAX_S)


@dataclass(frozen=True)
class Decision:
    """Retry after ``countdown_s``, record the work failed with ``reason``, or stop (raise the error)."""

    action: Literal["retry", "fail", "stop"]
    countdown_s: int = 0
    reason: str = ""


def is_transient(error: BaseException, transient: tuple[type[BaseException], ...] = TRANSIENT) -> bool:
    """Whether ``error`` is the world's and passes (not counted against the image)."""
    return isinstance(error, transient)


def decide(
    error: BaseException,
    *,
    retries: int,
    errors: int,
    settings: Settings,
    stage: str,
    transient: tuple[type[BaseException], ...] = TRANSIENT,
    stops: bool = False,
) -> Decision:
    """What to do about ``error`` (see the table above). ``transient``: what counts as passing (the
    runtime adds Redis and broker outages); ``stops``: a configuration error is raised at once."""
    if is_transient(error, transient):
        if retries >= settings.task_max_retries:
            return Decision("fail", reason=f"gave up after {retries + 1} transient errors: {error}")
        return Decision("retry", backoff_s(retries))
    if stops and isinstance(error, ConfigError):
        return Decision("stop", reason=describe_error(error))
    if errors >= settings.task_max_errors or retries >= settings.task_max_retries:
        times = "once" if errors <= 1 else f"{errors} times"
        return Decision("fail", reason=f"unexpected error ({times}, at {stage}): {describe_error(error)}")
    return Decision("retry", backoff_s(retries))
