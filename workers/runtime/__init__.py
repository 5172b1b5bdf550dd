"""The Celery runtime, and the only place Celery lives: the app and its queues (``app``), the thin
tasks (``tasks``, with ``batching`` and ``events`` for the batched GPU task), each worker process's
context (``worker``), run tracking in Redis, and the recovery protocol. Everything the tasks run is a
plain function from the layers below.

The recovery protocol, in the order an image meets it:

1. **Sent** (``enqueue``): the producer sends one message per image to the first queue its
   pipeline has work for; a finished image counts towards the run's completion set, and the one
   that completes it sends the aggregation (``tracking``).
2. **Claimed** (``claims``): every delivery claims its image before the heavy work. A hold
   (``holds``: one Redis hash per run) says which process has it, for which message, and whether
   it is computing it (a GPU worker marks each forward pass, with how many images share it).
3. **Alive or gone** (``liveness``): every process has a token, a heartbeat key that expires after
   STALL_AFTER_S and a pid; a hold of a process that is gone is buried, and if it was computing
   the image that is a death, counted in storage; at MAX_WORKER_DEATHS the next delivery records
   the image as failed instead of crash-looping the pool.
4. **Swept** (``sweep``, one CPU worker per interval through a Redis lease, and the waiting
   producer for its own run): dead holders' holds buried and their unacknowledged messages handed
   back (``broker`` reads what the queues and kombu's unacknowledged hash hold); in a run with no
   progress for STALL_AFTER_S, what is lost is sent again (never what only waits its turn), holds
   that outlived their message abandoned, deliveries nobody started handed back; runs Redis forgot
   rebuilt from storage; finished runs without a summary aggregated again.

Storage is the source of truth throughout: every output key is a function of (run, input, stage)
and every stage skips stored work, so a message delivered twice, a worker killed mid-batch or a
Redis that forgot everything costs time, never a wrong or missing row. ``queue_metrics`` serves the
queues' waiting plus reserved messages to autoscalers.
"""
