"""What bounds the pace of a job: provider limits, keys, concurrency and memory.

`rate_limiter` holds each key's request and token buckets,
`provider_headroom` reads what the provider's headers say a key may spend
now, `key_latency` keeps each key's answer times (and when a wait is a
hang), `key_pool` leases keys and keeps their health, `adaptive_concurrency` and
`concurrency_limit` decide how many calls are in flight, `memory_guard`
and `memory_floor` keep the process inside its memory budget, and
`rate_limit_patience` bounds how long a job waits on a provider that
keeps saying no.
"""
