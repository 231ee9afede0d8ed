"""Where results live: one SQLite file per job, and what surrounds it.

`sqlite_store` writes results, failures and run records; `run_lease`
makes sure one run owns a store at a time; `state_folder` names the
files kept beside it; `store_aside` moves one out of the way for a fresh
run; `export` writes results out; `store_error` says what went wrong
with the file in one line.
"""
