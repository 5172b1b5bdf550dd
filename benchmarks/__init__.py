"""The benchmarks: each module measures one thing and prints Markdown tables (benchmarks/README.md).

Run one from the repository root as ``python -m benchmarks.NAME [options]`` (``--help`` lists them).
What they share lives in :mod:`benchmarks.harness` (options, the start, timing, interleaved rounds,
recording, tables, temporary servers and workers), :mod:`benchmarks.machine` (the machine a result
belongs to) and :mod:`benchmarks.workload` (synthetic inputs and the production stages timed on them).
"""
