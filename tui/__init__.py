"""crawldeck's front end: the `crawldeck` command line and the Textual dashboard.

It reaches the engine through `engine.api` only (a test holds it to that).
"""
