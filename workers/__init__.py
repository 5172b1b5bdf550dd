"""Pipeline stages and the Celery workers that run them.

Importing ``workers`` or any stage module does not import Celery; ``workers.app`` (what
``celery -A workers worker`` looks up) builds the Celery application on first access.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "app":
        from workers.runtime.app import app

        return app
    raise AttributeError(f"module 'workers' has no attribute {name!r}")
