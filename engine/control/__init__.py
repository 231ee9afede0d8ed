"""Steering a running job: one protocol, reached in-process or over a socket.

`controls.JobControls` is the one control surface (snapshot, set and adjust
concurrency, presets, pause, resume, drain, stop).  The engine implements
it; `server` exposes it on a Unix socket beside the store and `client`
speaks to that socket, so a dashboard attached from another shell steers
the job exactly as the one that started it.
"""
