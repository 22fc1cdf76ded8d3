"""Tools for testing perceive plugins: the conformance kit and test images.

>>> from perceive.testing import check_action
>>> report = check_action("region_select")
>>> assert report.ok, report.render()

The kit itself lives in :mod:`perceive.conformance` (``perceive plugins check`` runs it);
production code never imports :mod:`perceive.testing` (an import-linter contract checks it).
"""

from perceive.conformance import CheckResult, ConformanceReport, awkward_images, check_action, real_photos

__all__ = ["CheckResult", "ConformanceReport", "awkward_images", "check_action", "real_photos"]
