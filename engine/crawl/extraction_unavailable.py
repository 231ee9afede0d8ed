"""The one error that stops a crawl before its first page: no extraction workers.

Apart from `extraction` so the intake can name it without loading the
crawl stack (pebble, the parsers) into jobs that never crawl.
"""

from __future__ import annotations


class ExtractionUnavailable(OSError):
    """The extraction workers could not be started (the crawl cannot go on)."""
