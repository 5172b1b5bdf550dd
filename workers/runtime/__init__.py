"""The Celery runtime, and the only place Celery lives: the app and its queues, thin tasks, run tracking
in Redis. Everything it runs is a plain function from the layers below.
"""
