"""workers.ops.device_errors: which device errors are out of memory, which break the CUDA context.

The messages are the ones torch, cuDNN, cuBLAS and the CUDA runtime write; no GPU needed.
"""

from __future__ import annotations

import pytest
import torch

from workers.ops.device_errors import is_broken_cuda_context, is_out_of_memory

OUT_OF_MEMORY = [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 79.1 GiB total capacity)"),
    RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
    RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    torch.AcceleratorError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"),
    RuntimeError("cuFFT error: CUFFT_ALLOC_FAILED"),
]
BROKEN = [
    torch.AcceleratorError("CUDA error: an illegal memory access was encountered\nCompile with `TORCH_USE_CUDA_DSA`"),
    RuntimeError("CUDA error: device-side assert triggered"),
    RuntimeError("CUDA error: uncorrectable ECC error encountered"),
    RuntimeError("CUDA error: unspecified launch failure"),
    RuntimeError("CUDA error: an illegal instruction was encountered"),
    RuntimeError("CUDA error: misaligned address"),
    RuntimeError("CUDA error: unknown error"),
    RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED: an illegal memory access was encountered"),
]
NEITHER = [
    RuntimeError("Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu!"),
    RuntimeError("CUDA error: invalid argument"),
    ValueError("out of memory"),  # not a RuntimeError: not from the device
    KeyError("illegal memory access"),
    RuntimeError("an illegal memory access was encountered"),  # says nothing about CUDA
]


@pytest.mark.parametrize("exc", OUT_OF_MEMORY, ids=str)
def test_allocator_failures_are_out_of_memory(exc):
    assert is_out_of_memory(exc) and not is_broken_cuda_context(exc)


@pytest.mark.parametrize("exc", BROKEN, ids=str)
def test_sticky_cuda_errors_break_the_context(exc):
    assert is_broken_cuda_context(exc) and not is_out_of_memory(exc)


@pytest.mark.parametrize("exc", NEITHER, ids=str)
def test_other_errors_are_neither(exc):
    assert not is_broken_cuda_context(exc) and not is_out_of_memory(exc)


def test_the_cuda_error_code_decides_where_torch_gives_one():
    exc = torch.AcceleratorError("CUDA error")
    exc.error_code = 700  # cudaErrorIllegalAddress
    assert is_broken_cuda_context(exc)
    exc.error_code = 1  # cudaErrorInvalidValue
    assert not is_broken_cuda_context(exc)
