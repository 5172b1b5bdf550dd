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
* ``die-on:<name>``: the worker process SIGKILLs itself when it starts on the input ``<name>`` (the
  CPU stage, or a GPU forward pass holding it): a crash no memory limit is needed for, which can
  hit one image among same-size ones. The fault tests prove the rest with the kernel's OOM killer
  (``testbed.memory``).
* ``raise-on:<name>``: an unexpected exception (a bug) at the same places, every time.
* ``raise-once:aggregate``: the first aggregation in each worker process raises.
* ``raise-in:train``: every training chunk raises before it trains.
* ``lose-train-next-once``: the first publish of a training job's next chunk fails as in an outage.
* ``device-lost``: the first forward pass of the process meets a broken CUDA context (an illegal
  memory access, an Xid): what no CPU can produce.
* ``stall-forward[:<n>]``: not a fault: after ``n`` (default 0) forward passes of the upscaler,
  every pass hangs (logging STALL_MARK), so a test kills the worker inside one for certain, whatever
  the machine's speed.
* ``pause-stage-until:<path>``: not a fault: the GPU task, its images claimed and marked, waits
  before the stage runs until ``<path>`` exists (logging PAUSE_MARK), so a test stops a server at
  that very point.
* ``hold-until:<path>``: not a fault: the worker waits, started and loaded, before it consumes its
  first message, until ``<path>`` exists (a test moves it into a memory group meanwhile).
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


def _device_lost(_: str) -> None:
    import torch

    from workers.ops.upscale import Upscaler

    real = Upscaler._model_forward
    lost: list[bool] = []

    def forward(self: Upscaler, x: torch.Tensor) -> torch.Tensor:
        if not lost:
            lost.append(True)  # the message torch raises; the upscaler must recognise it as sticky
            raise RuntimeError("simulated: CUDA error: an illegal memory access was encountered")
        return real(self, x)

    Upscaler._model_forward = forward


def _storage_down(name: str) -> None:
    from workers.errors import StorageUnavailableError
    from workers.run import stages

    real = stages.read_input

    def read_input(ctx, manifest, image):  # same signature as the real one
        if image == name:
            raise StorageUnavailableError(f"simulated: S3 unreachable for {image}")
        return real(ctx, manifest, image)

    stages.read_input = read_input


def _lose_aggregate_once(_: str) -> None:
    from workers.runtime import tasks

    real = tasks.aggregate.apply_async
    lost: list[bool] = []

    def apply_async(*args, **kwargs):
        if not lost:
            lost.append(True)
            return None
        return real(*args, **kwargs)

    tasks.aggregate.apply_async = apply_async


def _on_input(name: str, act) -> None:  # act(name) is called where the input is worked on
    """Call ``act`` when the CPU task starts on ``name`` (after its claim), or when a GPU forward pass
    that holds it starts."""
    from workers.run import stages
    from workers.runtime import tasks

    denoise_stage, on_device = tasks.denoise_stage, stages._denoise_on_device

    def denoise(ctx, run_id, image):
        if image == name:
            act(image)
        return denoise_stage(ctx, run_id, image)

    def denoise_on_device(ctx, manifest, batch, *args):
        if any(item.name == name for item in batch):
            act(name)
        return on_device(ctx, manifest, batch, *args)

    tasks.denoise_stage, stages._denoise_on_device = denoise, denoise_on_device


def _die_on(name: str) -> None:
    import signal

    _on_input(name, lambda _: os.kill(os.getpid(), signal.SIGKILL))


def _raise_on(name: str) -> None:
    def bug(image: str) -> None:
        raise ValueError(f"simulated: a bug on {image}")

    _on_input(name, bug)


def _raise_once(_: str) -> None:
    from workers.runtime import tasks

    real = tasks.aggregate_stage
    raised: list[bool] = []

    def aggregate_stage(*args, **kwargs):
        if not raised:
            raised.append(True)
            raise RuntimeError("simulated: aggregation bug")
        return real(*args, **kwargs)

    tasks.aggregate_stage = aggregate_stage


def _raise_in_train(_: str) -> None:
    from workers.training import chunks

    def make_trainer(*args, **kwargs):
        raise ValueError("simulated: a bug in training")

    chunks.make_trainer = make_trainer


def _lose_train_next_once(_: str) -> None:
    from kombu.exceptions import OperationalError

    from workers.runtime import tasks

    real = tasks.train.apply_async
    lost: list[bool] = []

    def apply_async(*args, **kwargs):
        if not lost:
            lost.append(True)
            raise OperationalError("simulated: Redis unreachable for the whole publish budget")
        return real(*args, **kwargs)

    tasks.train.apply_async = apply_async


def _hold_until(path: str) -> None:
    import logging
    import time

    from celery import signals

    @signals.worker_ready.connect(weak=False)
    def _wait(**_: object) -> None:  # the event loop, and with it every delivery, starts after this returns
        logging.getLogger("simulated").warning("%s: paused before consuming", HOLD_MARK)
        while not os.path.exists(path):
            time.sleep(0.05)


def _stall_forward(after: str) -> None:
    import logging
    import time

    from workers.ops.upscale import Upscaler

    real, passes = Upscaler._model_forward, []

    def forward(self: Upscaler, x: object) -> object:
        if len(passes) < int(after or 0):
            passes.append(True)
            return real(self, x)
        logging.getLogger("simulated").warning("%s: %s", STALL_MARK, tuple(x.shape))
        while True:
            time.sleep(1)

    Upscaler._model_forward = forward


def _pause_stage_until(path: str) -> None:
    import logging
    import time

    from workers.runtime import tasks

    real = tasks.upscale_stage

    def upscale_stage(*args, **kwargs):  # the real one's signature
        logging.getLogger("simulated").warning("%s: waiting for %s", PAUSE_MARK, path)
        while not os.path.exists(path):
            time.sleep(0.05)
        return real(*args, **kwargs)

    tasks.upscale_stage = upscale_stage


HOLD_MARK = "simulated hold-until"
PAUSE_MARK = "simulated pause before the GPU stage"
STALL_MARK = "simulated stall in a forward pass"

PATCHES = {"oom-flat": _oom_flat, "device-lost": _device_lost, "stall-forward": _stall_forward,
           "storage-down": _storage_down, "lose-aggregate-once": _lose_aggregate_once, "die-on": _die_on, "raise-on": _raise_on, "raise-once": _raise_once, "raise-in": _raise_in_train,
           "lose-train-next-once": _lose_train_next_once, "hold-until": _hold_until,
           "pause-stage-until": _pause_stage_until}

if SIMULATE:
    _install()
