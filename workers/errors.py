"""Every error the pipeline raises on purpose.

Two branches decide what happens to an image when something goes wrong:

* :class:`PermanentImageError` -- the image itself is at fault (undecodable, too large, wrong mode,
  unusable output). Retrying cannot help: the image is recorded as failed and the run goes on.
* :class:`TransientError` -- the world is at fault (storage unreachable, GPU out of memory).
  The task is retried with backoff; the image is never marked failed for it.

:class:`ConfigError` is neither: the deployment is wrong (missing weights, bad credentials) and an
operator must act, so it stops the command with one clear line. Nor is :class:`DeviceLostError`: the
process's accelerator is unusable until the process is replaced.
"""

from __future__ import annotations


class EnhanceError(Exception):
    """Base class of every error raised on purpose by this project."""


class ConfigError(EnhanceError):
    """The configuration cannot work (bad setting, missing weights, wrong credentials)."""


class PermanentImageError(EnhanceError):
    """This image cannot be processed; retrying will not change that."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


class InvalidImageError(PermanentImageError):
    """The bytes are not a decodable image of a supported format or mode."""


class ImageTooLargeError(PermanentImageError):
    """The file or its declared pixel count exceeds the configured limits."""


class SubmissionMismatchError(PermanentImageError):
    """The image's submission row does not have the submission's column count."""


class TransientError(EnhanceError):
    """A temporary condition; the same work may succeed if retried later."""


class StorageUnavailableError(TransientError):
    """The object store could not be reached or answered with a server error."""


class DeviceOutOfMemoryError(TransientError):
    """The accelerator ran out of memory even for the smallest tile."""


class DeviceLostError(EnhanceError):
    """The accelerator's context is broken (illegal memory access, device-side assert, Xid): nothing
    this process sends to the device can succeed again. Neither the image's fault nor a condition that
    passes: the images go back to the queue and the process should exit so that it is replaced."""


class UnsupportedModelError(ConfigError):
    """The checkpoint loads but is not a 3-channel, 4x image super-resolution model."""


class WeightsUnavailableError(ConfigError):
    """The weights could be neither found locally nor downloaded."""


class StorageFullError(ConfigError):
    """The store refuses writes for good: its disk or quota is full, or it is read-only. Not one image's
    fault and not a passing condition: an operator must free space."""


class RunNotFoundError(ConfigError):
    """No run manifest exists under the given run id."""


class RunCancelledError(EnhanceError):
    """The run was cancelled while the command waited for it, or before: resuming it takes
    ``--resume-cancelled``."""


class TrainingFailedError(EnhanceError):
    """A distributed training job ended failed (a chunk's error, or its workers kept dying)."""


class InvalidKeyError(EnhanceError, ValueError):
    """An object key would escape its prefix (``..``, absolute path, control characters)."""


class ObjectNotFoundError(EnhanceError, KeyError):
    """No object is stored under the key."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:
        return f"no object at {self.key!r}"
