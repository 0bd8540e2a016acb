"""The background worker: claims queued jobs from the database and runs them through ``ml.steps``.

``runner`` claims (SKIP LOCKED on PostgreSQL, a single-writer claim on SQLite), heartbeats, requeues
jobs whose worker went silent and loops; ``tasks`` holds one function per job kind; ``progress``
writes a running job's progress and notices cancel requests.
"""
