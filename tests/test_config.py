import textwrap

import pytest

from perceive.config import PerceiveConfig, load_config
from perceive.errors import ConfigError


def write(tmp_path, text):
    p = tmp_path / "run.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_full_config(tmp_path):
    p = write(tmp_path, """
        model:
          path: models/vpt
        encoders:
          - name: dinov2_large
            weights: weights/dinov2-large
            options: {crop: 224}
        actions:
          region_select: {}
          dino: {encoder: dinov2_large}
          zoom: {enabled: false, options: {size: 336}}
        runtime: {max_hops: 2, max_new_tokens: 64, on_malformed: stop}
        device: cpu
        dtype: float32
    """)
    cfg = load_config(p)
    assert cfg.model.path == tmp_path / "models/vpt"  # relative to the file
    assert cfg.encoder_configs()["dinov2_large"].weights == tmp_path / "weights/dinov2-large"
    assert cfg.enabled_actions() == ["region_select", "dino"]
    assert cfg.runtime.max_hops == 2 and cfg.runtime.on_malformed == "stop"


def test_wrong_field_names_field_file_and_line(tmp_path):
    p = write(tmp_path, """
        model:
          path: m
        runtime:
          max_hop: 3
    """)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "runtime.max_hop (line 5)" in msg and "did you mean 'max_hops'" in msg


def test_wrong_type_and_value(tmp_path):
    p = write(tmp_path, """
        runtime: {max_new_tokens: -1}
        dtype: float64
    """)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "runtime.max_new_tokens (line 2)" in str(e.value) and "dtype (line 3)" in str(e.value)


def test_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "model: [unclosed\n"))


def test_unknown_names_against_the_registry(registry):
    cfg = PerceiveConfig.model_validate({"actions": {"region_selct": {}, "dino": {"encoder": "dinov2_larg"}},
                                         "encoders": [{"name": "sam_vit_x"}]})
    errors = cfg.check_names(registry)
    assert any("region_selct" in e and "did you mean 'region_select'" in e for e in errors)
    assert any("dinov2_larg" in e and "dinov2_large" in e for e in errors)
    assert any("sam_vit_x" in e for e in errors)


def test_cli_config_check(tmp_path):
    import subprocess
    import sys

    good = write(tmp_path, "actions: {zoom: {}}\n")
    out = subprocess.run([sys.executable, "-m", "perceive", "config", "check", str(good)], capture_output=True,
                         text=True)
    assert out.returncode == 0 and "ok" in out.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("actions: {zooom: {}}\n")
    out = subprocess.run([sys.executable, "-m", "perceive", "config", "check", str(bad)], capture_output=True,
                         text=True)
    assert out.returncode == 1 and "did you mean 'zoom'" in out.stdout
