"""A non-editable install works: the wheel holds the named configs and the `minbert` console
script, and, installed outside the source tree, finds its configs from any directory."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from minbert.configs import CONFIG_DIR, resolve_config

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the sources (the build leaves build/ and *.egg-info behind)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "minbert", src / "minbert", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist)], check=True, cwd=src)  # fmt: skip
    (path,) = dist.glob("minbert-*.whl")
    return path


@pytest.mark.slow
def test_wheel_holds_the_configs_and_the_console_script(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {f"minbert/configs/{p.name}" for p in CONFIG_DIR.glob("*.yaml")}
    assert {"minbert/configs/main.yaml", "minbert/configs/best.yaml"} <= shipped <= set(names)
    assert {"minbert/configs/tasks/cfimdb.yaml", "minbert/tasks/builtin/sst.yaml", "minbert/tasks/builtin/para.yaml",
            "minbert/tasks/builtin/sts.yaml"} <= set(names)  # fmt: skip
    assert {"minbert/inference/predictor.py", "minbert/inference/export.py", "minbert/inference/serve.py",
            "minbert/inference/static/index.html"} <= set(names)  # fmt: skip
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[console_scripts]" in text and "minbert = minbert.cli:main" in text


@pytest.mark.slow
def test_installed_wheel_finds_its_configs_from_anywhere(wheel, tmp_path):
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "-q"]
    subprocess.run([*pip, "--target", str(site), str(wheel)], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}  # the installed copy, not this checkout
    script = "import minbert.configs as c; print(c.__file__); print(c.resolve_config('best'))"
    out = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, env=env, capture_output=True, text=True,
                         check=True)  # fmt: skip
    module, best = out.stdout.split()
    assert module.startswith(str(site)) and Path(best) == site / "minbert" / "configs" / "best.yaml"
    help_text = subprocess.run([str(site / "bin" / "minbert"), "train", "--help"], cwd=elsewhere, env=env,
                               capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "--config" in help_text


def test_config_names_and_paths():
    assert resolve_config(None) == CONFIG_DIR / "main.yaml"
    assert resolve_config("best") == CONFIG_DIR / "best.yaml"
    assert resolve_config(str(CONFIG_DIR / "seed.yaml")) == CONFIG_DIR / "seed.yaml"
    from minbert.config import ConfigError

    with pytest.raises(ConfigError, match="not found.*main"):
        resolve_config("no_such_config")
