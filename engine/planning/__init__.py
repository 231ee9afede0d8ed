"""A job's plan before it runs: its requests, tokens, cost and time, with no request sent.

`make_plan` reads the input as the engine does (its readers, chunker and
batcher; a crawl job's stored pages), skips what the store already holds,
and works out what the keys' limits, the start-up burst and the concurrency
ceiling allow (`time_bound`).
"""
