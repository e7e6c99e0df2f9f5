"""The named run configs, shipped with the package (`minbert/configs/<name>.yaml`), and their lookup.

`resolve_config("best")` is this folder's best.yaml; a path to an existing file is taken as it
is. The YAML files are package data, so a non-editable install (`pip install .`, or the wheel)
finds them from any working directory.
"""

from __future__ import annotations

from pathlib import Path

from minbert.config import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent
MAIN_CONFIG = "main"  # the main job: `minbert train` with no --config


def config_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config(name_or_path: str | Path | None) -> Path:
    """A config file path, or the name of a shipped config (`best` -> minbert/configs/best.yaml);
    None is the main job's config."""
    value = str(name_or_path or MAIN_CONFIG)
    path = Path(value)
    if path.is_file():
        return path
    candidate = CONFIG_DIR / f"{value}.yaml"
    if candidate.is_file():
        return candidate
    shipped = ", ".join(config_names())
    raise ConfigError(f"config {value!r} not found: neither a file nor one of the shipped configs ({shipped})")
