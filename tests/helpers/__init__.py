"""What the tests share, by job: plain functions and records, except the two fixture modules.

* :mod:`~tests.helpers.paths`: the repository, the sample, the weights, the benchmarks.
* :mod:`~tests.helpers.images`: tiny images and hostile input files.
* :mod:`~tests.helpers.models`: random-weight checkpoints and a stub upscaler.
* :mod:`~tests.helpers.runs`: runs built in a store; the producer run as a user runs it.
* :mod:`~tests.helpers.training`: pair datasets, photo folders, training settings.
* :mod:`~tests.helpers.servers`: real redis-server and weed mini (session fixtures).
* :mod:`~tests.helpers.cluster`: real Celery workers against them (per-test fixtures).
* :mod:`~tests.helpers.scenarios`: the steps fault and recovery scenarios share.
* :mod:`~tests.helpers.browser`: headless Chromium for the report and Flower.

``tests/conftest.py`` registers the fixtures; ``tests/simulated/`` holds the faults injected into workers.
"""
