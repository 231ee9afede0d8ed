"""The bundled stand-ins for the outside world: demos and tests, not the engine.

`simulator` is an OpenAI-compatible provider with real rate-limit buckets
(`rate_buckets`), headers and faults; `site_server` is a synthetic web
site for the crawler; `make_transcripts` writes sample documents.  The
`*_launch` and `service_process` modules start them as child processes
for `crawldeck demo`, `crawldeck simulate` and the tests.
"""
