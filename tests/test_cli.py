import subprocess
import sys

import pytest


def test_demo_reads_the_example_card_through_a_region_hop(tmp_path):
    from perceive.defaults import default_examples, default_model_path

    if default_model_path() is None:
        pytest.skip("models/default is not in this checkout")
    out = subprocess.run([sys.executable, "-m", "perceive", "demo", "--out", str(tmp_path), "--device", "cpu"],
                         capture_output=True, text=True, timeout=300, env={"COLUMNS": "200", "PATH": ""})
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    number = default_examples()[0][1]
    assert number in lines  # the answer, on its own line
    assert any("hop 1" in line and "region_select" in line for line in lines)
    assert (tmp_path / "trace.png").stat().st_size > 0


def test_version():
    out = subprocess.run([sys.executable, "-m", "perceive", "version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip()
