"""Where the repository and its config trees lie; standard library only, so light tools (shell completion,
the pipeline's supervisor) find them without importing torch."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"  # the training config tree (Hydra's search path); the tools' own configs: conf_tools/
