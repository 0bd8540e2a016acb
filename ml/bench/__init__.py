"""Benchmarks of the science code (run through ``lenslab bench …``): printed table + JSON results."""
