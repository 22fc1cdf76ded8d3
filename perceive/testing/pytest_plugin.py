"""pytest fixtures for plugin authors (registered through the ``pytest11`` entry point).

* ``perceive_registry``: a fresh registry of the installed plugins;
* ``perceive_photo``: a real RGB photo;
* ``perceive_conformance``: ``perceive_conformance("my_action")`` runs the kit and fails the
  test with the readable report if any check fails.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def perceive_registry():
    from perceive.plugins import load_registry

    return load_registry()


@pytest.fixture
def perceive_photo():
    from perceive.testing.images import real_photos

    return real_photos()["astronaut"]


@pytest.fixture
def perceive_conformance(perceive_registry):
    from perceive.testing.conformance import check_action

    def run(action, **kw):
        report = check_action(action, registry=kw.pop("registry", perceive_registry), **kw)
        if not report.ok:
            pytest.fail(report.render(), pytrace=False)
        return report

    return run
