"""A run: its manifest and keys, presets, and the stage functions over storage keys that both the
Celery tasks and the in-process runner call.
"""
