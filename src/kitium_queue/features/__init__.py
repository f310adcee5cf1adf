"""Features built on the engine's extension points, each in a module of its own.

* ``flowcontrol``: per-key rate limits and concurrency caps, a global cap (Lua slots,
  parked jobs).
* ``schedules`` / ``scheduler``: cron and interval schedules and the leaderless
  scheduler service.
* ``batches``: processors that take a batch of jobs.
* ``partitioned``: one logical queue over several physical queues (a façade from
  ``api.py``).
* ``regions``: one queue over several regions (``GlobalQueueManager``): routing,
  replication through the outbox, failover fenced by epochs (a façade, Lua slots).

Features depend on the core and plug into it through its extension points; users reach
them through the queue's public methods (``set_rate_limit``, ``schedule_job``,
``process_batch``) and the package namespace (``PartitionedQueue``, ``Schedule``).
"""
