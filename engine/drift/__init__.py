"""Quality drift: per-result features and tests against a baseline.

What each gate trips at and does is the job's `[drift]` settings
(`engine.config.settings.DriftSettings`).
"""
