"""Benchmarks of ``email_change`` (run with ``make bench``; never collected by pytest)."""
