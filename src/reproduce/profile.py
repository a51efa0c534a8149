"""Pipeline profiles: conf_tools/pipeline/<name>.yaml, each merged onto the ``base`` profile it names."""

from __future__ import annotations

from omegaconf import OmegaConf

from src.paths import REPO

PROFILES = REPO / "conf_tools" / "pipeline"  # outside conf/: not a training group


def names() -> list[str]:
    """The profiles there are, sorted."""
    return sorted(p.stem for p in PROFILES.glob("*.yaml"))


def load_profile(name: str) -> dict:
    """conf_tools/pipeline/<name>.yaml merged onto its ``base`` profile (lists are replaced, not appended)."""
    path = PROFILES / f"{name}.yaml"
    if not path.is_file():
        raise SystemExit(f"error: unknown profile {name!r}; valid profiles: {', '.join(names())}")
    cfg = OmegaConf.load(path)
    base = cfg.pop("base", None)
    return OmegaConf.to_container(OmegaConf.merge(load_profile(base), cfg) if base else cfg)
