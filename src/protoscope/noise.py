"""Known-harmless library messages, silenced where they come from (by module and text), not globally."""

from __future__ import annotations

import logging
import warnings


class _DropMessages(logging.Filter):
    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).lstrip().startswith(self.prefixes)


def silence_known_noise() -> None:
    """Lightning's advertising tips, a torch-pytree deprecation inside Lightning, Lightning's note that
    the frozen classifier is in eval mode (it is, on purpose), its advice on short logging intervals and
    its hint to prepend ``srun`` whenever a SLURM client is installed (protoscope runs on SLURM through
    Hydra's submitit launcher, which starts each job under SLURM itself)."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=Warning,
                            module=r"pytorch_lightning\.utilities\._pytree")
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode", module=r"pytorch_lightning\..*")
    # generate's logging interval is its own (trainer.log_every_n_steps): a short run needs no advice on it
    warnings.filterwarnings("ignore", message=r"The number of training batches .* is smaller than the logging interval",
                            module=r"pytorch_lightning\.loops\.fit_loop")
    warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used")
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages("💡 Tip"))
