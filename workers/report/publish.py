"""The report as a stage of its own: it reads a finished run (through :mod:`workers.run`), so it sits
above the run stages, and whoever completes a run (the aggregate task, the embedded runner) calls it."""

from __future__ import annotations

from workers.io.storage import Storage
from workers.report.collect import collect_report_data
from workers.report.render import render_report
from workers.run.context import StageContext
from workers.run.keys import RunKeys


def write_report(storage: Storage, run_id: str, html: str) -> str:
    """Store the report at ``runs/<run>/report.html`` and return that key.

    Raises:
        InvalidKeyError: ``run_id`` is not a valid run id.
        TransientError: the storage could not be reached.
    """
    key = RunKeys(run_id).report
    storage.put(key, html.encode("utf-8"))
    return key


def report_stage(ctx: StageContext, run_id: str) -> str:
    """Write the run's self-contained ``report.html``; return its key.

    Raises:
        TransientError: storage unreachable.
    """
    # collect_report_data reads the manifest itself; the source it names never changes, so the cached copy serves.
    data = collect_report_data(
        ctx.storage, ctx.source(ctx.manifest(run_id)), run_id, limits=ctx.limits, threads=ctx.settings.io_threads
    )
    return write_report(ctx.storage, run_id, render_report(data))
