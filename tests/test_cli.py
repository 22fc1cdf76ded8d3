import subprocess
import sys


def test_demo_runs_and_writes_views(tmp_path):
    out = subprocess.run([sys.executable, "-m", "perceive", "demo", "--out", str(tmp_path)], capture_output=True,
                         text=True, timeout=120, env={"COLUMNS": "200", "PATH": ""})
    assert out.returncode == 0, out.stderr
    assert "region_select" in out.stdout and "zoom" in out.stdout
    assert "(64, 0, 320, 192)" in out.stdout and "(64, 0, 320, 96)" in out.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hop1_region_select.png", "hop2_zoom.png"]


def test_version():
    out = subprocess.run([sys.executable, "-m", "perceive", "version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip()
