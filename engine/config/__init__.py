"""A job's settings, and the one way every settings file is read and checked.

`settings` holds the typed values; `job_file` reads a job file into them,
`presets` checks presets from anywhere, `drift_table` reads `[drift]`.
All of them, and the dashboard's theme and user settings files, read TOML
with `toml_source` (the line of every key), check it with `table_check`
(unknown keys, types, rules) and report `config_problem.ConfigError`:
one line a problem, naming the file, line and key.
"""
