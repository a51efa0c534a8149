"""Tab completion for ``python src/train.py`` (Hydra's ``-sc``): the training config tree, without torch.

src/train.py hands a ``-sc``/``--shell-completion`` call here before its own imports, so each TAB costs Hydra's
config composition (a fraction of a second), not the torch and Lightning imports of a run (seconds).
"""

import hydra
from omegaconf import DictConfig

from src.paths import REPO


# an absolute path: called from src/train.py, this module is imported, and Hydra would look for a package ../conf
@hydra.main(version_base="1.3", config_path=str(REPO / "conf"), config_name="train")
def complete(cfg: DictConfig) -> None:
    """Never runs a job: Hydra answers -sc (install, query, uninstall) and exits before calling it."""
