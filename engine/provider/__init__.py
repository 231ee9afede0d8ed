"""Talking to an OpenAI-compatible provider: the client and what it must never echo.

`client` sends a batch and reads the answer, its usage and its rate-limit
headers; `redaction` makes sure no API key, even one a provider echoes
back, reaches a log, a row or the screen.
"""
