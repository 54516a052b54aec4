"""Crash diagnosis: parse a failure's output (``parse``), match it against the rules (``rules``), decide
category, phase and restart verdict (``classify``), and build the error record (``failure``).

Standard library only: it runs in the supervisor's crash path.
"""

from tlog.diagnosis.classify import Diagnosis, FailureRecord, classify, classify_hang, classify_text, normalise_phase

__all__ = ["Diagnosis", "FailureRecord", "classify", "classify_hang", "classify_text", "normalise_phase"]
