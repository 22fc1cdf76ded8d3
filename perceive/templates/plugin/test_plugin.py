"""Runs perceive's conformance kit on this plugin's action (needs the plugin installed)."""

from perceive.testing import check_action


def test_${name}_conforms():
    report = check_action("${name}")
    assert report.ok, report.render()


def test_${name}_is_registered(perceive_registry):
    assert "${name}" in perceive_registry.actions
    assert perceive_registry.actions["${name}"].dist == "${dist}"
