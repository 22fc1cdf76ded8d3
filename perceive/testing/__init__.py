"""Tools for testing perceive plugins: the conformance kit and test images.

>>> from perceive.testing import check_action
>>> report = check_action("region_select")
>>> assert report.ok, report.render()
"""

from perceive.testing.conformance import CheckResult, ConformanceReport, check_action
from perceive.testing.images import awkward_images, real_photos

__all__ = ["CheckResult", "ConformanceReport", "awkward_images", "check_action", "real_photos"]
