"""Faults that cannot happen for real here, injected into real worker processes (fault tests only).

Python imports ``sitecustomize`` at start-up from the first folder on ``sys.path`` that has one; the
fault tests put this folder on the workers' PYTHONPATH and name the faults in SIMULATE (comma
separated). Nothing here runs unless SIMULATE is set. Each simulation stands in for something that
needs hardware or a failure mode no local server has:

* ``oom-flat``: CUDA out of memory, at every tile size, for any batch holding a flat image (one
  colour): what a single huge image does on a small card.
* ``storage-down:<name>``: the object store is unreachable for the input ``<name>`` only, forever
  (a transient error that never clears).
* ``lose-aggregate-once``: the first aggregation message a worker sends is lost between the worker
  and the broker.
"""

from __future__ import annotations

import os

SIMULATE = [s for s in os.environ.get("SIMULATE", "").split(",") if s]


def _install() -> None:
    from celery import signals

    @signals.worker_init.connect(weak=False)
    def _patch(**_: object) -> None:  # before the pool forks: children inherit the patches
        for fault in SIMULATE:
            kind, _, arg = fault.partition(":")
            PATCHES[kind](arg)


def _oom_flat(_: str) -> None:
    import torch

    from workers.ops.upscale import Upscaler

    real = Upscaler._model_forward

    def forward(self: Upscaler, x: torch.Tensor) -> torch.Tensor:
        flat = (x.flatten(1).amax(1) == x.flatten(1).amin(1)).any()
        if flat:
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        return real(self, x)

    Upscaler._model_forward = forward


def _storage_down(name: str) -> None:
    from workers.errors import StorageUnavailableError
    from workers.run import stages

    real = stages.read_input

    def read_input(ctx, manifest, image):  # noqa: ANN001, ANN202 - same signature as the real one
        if image == name:
            raise StorageUnavailableError(f"simulated: S3 unreachable for {image}")
        return real(ctx, manifest, image)

    stages.read_input = read_input


def _lose_aggregate_once(_: str) -> None:
    from workers.runtime import tasks

    real = tasks.aggregate.apply_async
    lost: list[bool] = []

    def apply_async(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if not lost:
            lost.append(True)
            return None
        return real(*args, **kwargs)

    tasks.aggregate.apply_async = apply_async


PATCHES = {"oom-flat": _oom_flat, "storage-down": _storage_down, "lose-aggregate-once": _lose_aggregate_once}

if SIMULATE:
    _install()
