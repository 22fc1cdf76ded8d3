"""The conformance kit, re-exported: it lives in :mod:`perceive.conformance.checks` (``perceive
plugins check`` runs it, so it is production code)."""

from perceive.conformance.checks import CheckResult, ConformanceReport, check_action

__all__ = ["CheckResult", "ConformanceReport", "check_action"]
