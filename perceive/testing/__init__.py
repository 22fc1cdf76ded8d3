"""Tools for testing perceive plugins: the conformance kit and test images.

>>> from perceive.testing import check_action
>>> report = check_action("region_select")
>>> assert report.ok, report.render()

The kit itself lives in :mod:`perceive.conformance` (``perceive plugins check`` runs it);
production code never imports :mod:`perceive.testing` (an import-linter contract checks it).
"""

from perceive.conformance import CheckResult, ConformanceReport, awkward_images, check_action, real_photos
from perceive.testing.branches import BranchReport, check_branch

__all__ = ["BranchReport", "CheckResult", "ConformanceReport", "awkward_images", "check_action", "check_branch",
           "real_photos"]
