"""Code from outside the repository: STEs, weight quantizers or models that a user's own package registers.

Two ways in, both imported before a config is checked (src.config.validate) and before a saved run is rebuilt
(src.module.build_from_config), so ``ste=my_ste`` is a known name by then:

- the config key ``plugins``: a list of importable module names, e.g. ``'plugins=[my_pkg.my_stes]'``;
- the entry-point group ``ste_lab.plugins`` of an installed distribution (``[project.entry-points."ste_lab.plugins"]
  my_stes = "my_pkg.my_stes"`` in its pyproject.toml): imported in every run, without a config key.

A plugin's YAML (conf/ste/my_ste.yaml) comes in through Hydra's search path: ``'hydra.searchpath=[pkg://my_pkg.conf]'``
or ``file:///abs/path/conf`` (README: Extending).
"""

from __future__ import annotations

import importlib
from functools import cache
from importlib.metadata import entry_points

from src.errors import ConfigError

ENTRY_POINTS = "ste_lab.plugins"


def load_plugins(modules=()) -> None:
    """Import the installed entry points' modules and ``modules``; a module that fails to import is one line."""
    for name in [*installed(), *(modules or ())]:
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - whatever the user's module raises, said in one line
            raise ConfigError(f"plugins: cannot import {name!r} ({type(err).__name__}: {err})") from None


@cache
def installed() -> tuple[str, ...]:
    """The modules the ``ste_lab.plugins`` entry points name (read once per process)."""
    return tuple(ep.value.split(":")[0] for ep in entry_points(group=ENTRY_POINTS))
