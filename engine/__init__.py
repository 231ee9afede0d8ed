"""crawldeck's engine: targets in, chunks batched into LLM calls at the providers' limits, rows out.

A library with a small public surface, `engine.api`: start a job, read its
snapshot (an immutable value), send it controls.  `engine.engine` composes
the stages; the packages beside it are what it composes, grouped by what
they are for (see ARCHITECTURE.md).  Nothing here imports Textual.
"""
