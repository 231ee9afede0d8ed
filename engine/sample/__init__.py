"""The demo's job file and its sample transcripts (package data)."""
