"""Runs perceive's conformance kits on this plugin's action and branch (needs the plugin installed)."""

from perceive.testing import check_action, check_branch


def test_${name}_action_conforms():
    report = check_action("${name}")
    assert report.ok, report.render()


def test_${name}_branch_conforms():
    report = check_branch("${name}")
    assert report.ok, report.render()


def test_${name}_is_registered(perceive_registry):
    assert perceive_registry.actions["${name}"].dist == "${dist}"
    assert perceive_registry.branches["${name}"].dist == "${dist}"
