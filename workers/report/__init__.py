"""The run report: :mod:`collect` reads a run, :mod:`clock` times it from its latest enqueue,
:mod:`scoring` scores it against ground truth and bicubic x4, :mod:`thumbnails` and :mod:`charts`
make its pictures, :mod:`labels` words its settings, :mod:`render` fills the HTML template, and
:mod:`publish` stores the page under the run."""

from workers.report.collect import collect_report_data
from workers.report.publish import report_stage, write_report
from workers.report.render import render_report
from workers.report.scoring import truth_by_name

__all__ = ["collect_report_data", "render_report", "report_stage", "truth_by_name", "write_report"]
