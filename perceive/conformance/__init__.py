"""The conformance kit: the checks every perception action must pass, and the images it runs
them on. ``perceive plugins check NAME`` runs it; plugin authors run it from pytest through
:mod:`perceive.testing` (which re-exports it) and perceive's pytest plugin.

>>> from perceive.conformance import check_action
>>> report = check_action("region_select")
>>> assert report.ok, report.render()
"""

from perceive.conformance.checks import CheckResult, CheckStatus, ConformanceReport, check_action
from perceive.conformance.images import awkward_images, real_photos

__all__ = ["CheckResult", "CheckStatus", "ConformanceReport", "awkward_images", "check_action", "real_photos"]
