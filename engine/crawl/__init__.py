"""Fetching web targets politely and safely, and turning pages into text."""
