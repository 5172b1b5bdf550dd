"""What a device error means: out of memory (recoverable: split, tile, retry) or a broken CUDA
context (never recoverable in this process).

PyTorch raises ``torch.OutOfMemoryError`` only for its own caching allocator. cuDNN and cuBLAS
allocate their workspaces and handles themselves and report a failure as a plain ``RuntimeError``
(``CUDNN_STATUS_ALLOC_FAILED``, ``CUBLAS_STATUS_ALLOC_FAILED``), and a CUDA API call that runs out
reports ``CUDA error: out of memory``: all of them are the same condition for us.

A *sticky* CUDA error (an illegal memory access, a device-side assert, an uncorrectable ECC error, a
GPU that fell off the bus: the kernel log's Xid) poisons the process's CUDA context: every later
call fails the same way. The only cure is a new process, so a worker should exit and let its
orchestrator replace it instead of failing (and retrying) every image it is handed.

Plain functions of an exception: testable without a GPU, importable without torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TypeVar

from workers.errors import DeviceLostError, DeviceOutOfMemoryError

T = TypeVar("T")

# cudaError_t values that leave the context unusable (CUDA runtime API, ``driver_types.h``).
STICKY_CUDA_ERROR_CODES = frozenset({
    46,  # cudaErrorDevicesUnavailable
    214,  # cudaErrorECCUncorrectable
    700,  # cudaErrorIllegalAddress
    702,  # cudaErrorLaunchTimeout
    709,  # cudaErrorContextIsDestroyed
    710,  # cudaErrorAssert
    714,  # cudaErrorHardwareStackError
    715,  # cudaErrorIllegalInstruction
    716,  # cudaErrorMisalignedAddress
    717,  # cudaErrorInvalidAddressSpace
    718,  # cudaErrorInvalidPc
    719,  # cudaErrorLaunchFailure
    999,  # cudaErrorUnknown (what an Xid usually surfaces as)
})

# The same errors as cudaGetErrorString words them (older torch raises a RuntimeError with no code).
_STICKY_MESSAGES = (
    "illegal memory access",
    "device-side assert triggered",
    "uncorrectable ecc error",
    "unspecified launch failure",
    "illegal instruction",
    "misaligned address",
    "invalid program counter",
    "hardware stack error",
    "launch timed out",
    "context is destroyed",
    "cuda error: unknown error",
    "busy or unavailable",
)

_ALLOCATOR_MESSAGES = (
    "out of memory",  # torch's allocator, and "CUDA error: out of memory" from any CUDA API call
    "cudnn_status_alloc_failed",
    "cublas_status_alloc_failed",
    "cufft_alloc_failed",
    "cusolver_status_alloc_failed",
    "cusparse_status_alloc_failed",
    "curand_status_allocation_failed",
)


def _message(exc: BaseException) -> str:
    return str(exc).lower()


def is_out_of_memory(exc: BaseException) -> bool:
    """True for every allocation failure on a device: torch's allocator, cuDNN, cuBLAS and the rest."""
    if type(exc).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError (torch.cuda's is the same class)
        return True
    if not isinstance(exc, RuntimeError):
        return False
    message = _message(exc)
    return any(marker in message for marker in _ALLOCATOR_MESSAGES)


def is_broken_cuda_context(exc: BaseException) -> bool:
    """True when ``exc`` says this process's CUDA context can never be used again (a sticky error)."""
    if not isinstance(exc, RuntimeError) or is_out_of_memory(exc):
        return False
    code = getattr(exc, "error_code", None)  # torch.AcceleratorError (torch >= 2.8) carries the cudaError_t
    if isinstance(code, int) and code in STICKY_CUDA_ERROR_CODES:
        return True
    message = _message(exc)
    return ("cuda" in message or "cudnn" in message or "cublas" in message) and any(
        marker in message for marker in _STICKY_MESSAGES)


def attempt(work: Callable[[], T]) -> tuple[bool, T | None]:
    """``(True, work())``, or ``(False, None)`` when the device ran out of memory (any allocator).

    It returns after its ``except`` block has ended, so when the caller retries smaller the failed
    attempt's tensors (held by the exception's traceback) are already freed.
    """
    try:
        return True, work()
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
    return False, None


@contextlib.contextmanager
def device_failures_raised(device: object) -> Iterator[None]:
    """Inside: a broken CUDA context raises :class:`DeviceLostError`, and an out-of-memory error that
    no split or tiling handled (a final copy, a recompute) raises :class:`DeviceOutOfMemoryError`."""
    try:
        yield
    except Exception as exc:
        if is_broken_cuda_context(exc):
            raise DeviceLostError(f"{device}: the CUDA context is broken ({type(exc).__name__}: {exc}); "
                                  "this process cannot use the device again") from exc
        if is_out_of_memory(exc):
            raise DeviceOutOfMemoryError(f"out of memory on {device}: {exc}") from None
        raise
