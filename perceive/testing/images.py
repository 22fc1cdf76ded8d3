"""Test images (real photos, awkward inputs), re-exported: they live in
:mod:`perceive.conformance.images`, the conformance kit's inputs."""

from perceive.conformance.images import PHOTOS, awkward_images, real_photos

__all__ = ["PHOTOS", "awkward_images", "real_photos"]
