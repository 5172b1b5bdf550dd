"""The last stage: a run's per-image rows streamed into ``submission.csv``, plus its failures and summary."""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from workers.errors import SubmissionMismatchError
from workers.io.storage import Storage, fetch_in_order
from workers.io.submission import SubmissionWriter, row_width, submission_id
from workers.run.context import StageContext
from workers.run.keys import RunKeys, RunProgress, stem
from workers.run.manifest import RunManifest, load_manifest, now_iso

logger = logging.getLogger(__name__)

MISSING_ID = "sample_submission.csv lists this ID, but no input has it: submission.csv has no row for it"


@dataclass(frozen=True)
class AggregateResult:
    run_id: str
    total: int
    written: int
    failed: int
    pending: int
    complete: bool  # False: pending images remain and nothing was written

    def as_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in ("run_id", "total", "written", "failed", "pending", "complete")}


def aggregate_stage(ctx: StageContext, run_id: str, allow_partial: bool = False) -> AggregateResult:
    """Stream every row, in manifest order, into ``submission.csv``; list failures in ``failures.json``.

    Idempotent: it rewrites both files from the per-image objects each time. With images still
    pending it writes nothing unless ``allow_partial``. ``summary.json`` records the manifest's
    listing digest: it is the outcome of that listing only (:func:`is_current_summary`).
    """
    manifest = load_manifest(ctx.storage, run_id)  # fresh: the name list may have grown
    keys = RunKeys(run_id)
    progress = RunProgress.read(ctx.storage, run_id)
    finished_stems = progress.done | progress.failed  # once: a union per name is quadratic in the run's size
    finished = [n for n in manifest.names if stem(n) in finished_stems]
    pending = [n for n in manifest.names if stem(n) not in finished_stems]
    if pending and not allow_partial:
        return AggregateResult(run_id, manifest.total, 0, 0, len(pending), complete=False)

    done = [n for n in manifest.names if stem(n) in progress.done]
    threads = ctx.settings.io_threads
    n_columns = manifest.expected_columns or _most_common_width(ctx.storage, keys, done, threads)

    def outcome(name: str) -> tuple[str, bool, bytes]:
        """(name, done?, its row or its failure record)."""
        if stem(name) in progress.done:
            return name, True, ctx.storage.get(keys.row(name))
        return name, False, ctx.storage.get(keys.failed(name))

    failures: list[dict[str, object]] = []
    with ctx.storage.writer(keys.submission) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        writer = SubmissionWriter(text, n_columns)
        expected = set(manifest.expected_ids) if manifest.expected_ids is not None else None
        for name, is_done, data in fetch_in_order(outcome, finished, threads):
            if not is_done:
                failures.append(json.loads(data))
                continue
            if expected is not None and submission_id(name) not in expected:
                failures.append({"name": name, "stage": "aggregate", "reason": (
                    f"its ID {submission_id(name)!r} is not in sample_submission.csv: left out of submission.csv "
                    "(its output is kept)")})
                continue
            try:
                writer.add(name, data.decode())
            except SubmissionMismatchError as exc:
                failures.append({"name": name, "stage": "aggregate", "reason": exc.reason})
        writer.close()
        text.flush()
        text.detach()
    failures.extend({"name": n, "stage": "listing", "reason": reason} for n, reason in manifest.rejected)
    failures.extend({"name": image_id, "stage": "listing", "reason": MISSING_ID} for image_id in missing_ids(manifest))
    failures.extend({"name": n, "stage": "pending", "reason": "not finished"} for n in pending)
    ctx.storage.put(keys.failures, json.dumps(failures, indent=1).encode())
    result = AggregateResult(run_id, manifest.total, writer.rows, len(failures) - len(pending), len(pending), True)
    summary = {**result.as_dict(), "at": now_iso(), "listing": manifest.listing_digest}
    ctx.storage.put(keys.summary, json.dumps(summary).encode())
    logger.info("run %s: submission with %d rows, %d failures", run_id, writer.rows, len(failures))
    return result


def missing_ids(manifest: RunManifest) -> list[str]:
    """The IDs sample_submission.csv lists that no entry of the source has (processed or refused)."""
    if manifest.expected_ids is None:
        return []
    present = {submission_id(name) for name in (*manifest.names, *(name for name, _ in manifest.rejected))}
    return [image_id for image_id in manifest.expected_ids if image_id not in present]


def is_current_summary(summary: Mapping[str, object], manifest: RunManifest) -> bool:
    """Whether ``summary.json`` was written for ``manifest``'s listing (not for an earlier one, before
    inputs were added, removed or changed, nor by a version that did not record the listing)."""
    return summary.get("listing") == manifest.listing_digest


def _most_common_width(storage: Storage, keys: RunKeys, names: Sequence[str], threads: int) -> int | None:
    """Without a sample submission, the width most rows share wins (first seen on ties).

    An extra streaming pass over the rows; a run with a sample submission never pays it.
    """
    widths = Counter(fetch_in_order(lambda name: row_width(storage.get(keys.row(name)).decode()), names, threads))
    return max(widths, key=widths.__getitem__) if widths else None
