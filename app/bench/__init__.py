"""Benchmarks of the app (``lenslab bench api``): real servers on loopback, numbers in a table and JSON."""
