"""Quality drift: per-result features, tests against a baseline, and gates."""
