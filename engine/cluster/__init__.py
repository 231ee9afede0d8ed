"""Many processes on one job through Redis: a shared queue of batches, shared key budgets.

Only loaded when a job file has a `[cluster]` table; without one the
in-process implementations (`engine.pipeline.work_queue`,
`engine.limits.key_pool`) run the job alone.
"""
