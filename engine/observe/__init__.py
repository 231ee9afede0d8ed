"""Watching a job: the snapshot, the events, and the readers of both.

`snapshot` is the immutable value every front end reads; `run_stats`
keeps the rolling figures it is built from; `events` are the job's log
entries; `snapshot_codec` carries a snapshot over the control socket;
`headless_reporter` prints one over SSH; `exit_status` turns the final
one into the process's exit code.
"""
