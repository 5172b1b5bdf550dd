"""Processes that never run a model never import torch.

CPU workers (one prefork child per core), Flower and a producer talking to a broker import the
Celery app and the stage modules; torch alone adds about 400 MiB of resident memory to each of
them. Each check runs in a fresh interpreter, because this test process has torch loaded already.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def torch_free(code: str, cwd: Path = ROOT) -> None:
    script = textwrap.dedent(code) + "\nimport sys\nassert 'torch' not in sys.modules, 'torch was imported'\n"
    result = subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize(
    "modules",
    [
        "import workers; workers.app.loader.import_default_modules(); import workers.runtime.tasks",  # celery -A workers
        "import producer.cli, producer.dispatch, producer.planning",
        "import workers.report, workers.run.resolve, producer.evaluate",
    ],
)
def test_worker_and_producer_modules_do_not_import_torch(modules: str) -> None:
    torch_free(modules)


def test_cpu_stages_run_without_torch(tmp_path: Path) -> None:
    """The CPU queue's work (NL-means, aggregation, the report) on a real local store loads no model."""
    torch_free(
        f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from tests.helpers.runs import make_run
        from tests.helpers.images import write_images
        from workers.settings import Settings
        from workers.run.context import StageContext
        from workers.run.aggregate import aggregate_stage
        from workers.run.stages import denoise_stage
        from workers.report import report_stage

        tmp = Path({str(tmp_path)!r})
        ctx = StageContext(Settings().replace(storage_url=str(tmp / "store")))
        names = write_images(tmp / "in", 2)
        make_run(ctx.storage, tmp / "in", names)
        assert [denoise_stage(ctx, "r1", name).status for name in names] == ["denoised", "denoised"]
        aggregate_stage(ctx, "r1", allow_partial=True)
        report_stage(ctx, "r1")
        """,
        cwd=tmp_path,
    )


def test_opening_local_storage_does_not_load_the_s3_client(tmp_path: Path) -> None:
    """Backends are imported only when their scheme is opened."""
    code = f"""
        import sys
        from workers.io.storage import open_storage
        open_storage({str(tmp_path)!r}).put("a/b.txt", b"x")
        assert "minio" not in sys.modules and "workers.io.storage.s3" not in sys.modules
        """
    torch_free(code)
