"""The experiment directory: layout and naming, append-only writers, streaming readers.

Stdlib-only: a script run without a supervisor writes through this code too.
"""
