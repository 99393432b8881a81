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
    """Lightning's advertising tips, a torch-pytree deprecation inside Lightning, and Lightning's
    note that the frozen classifier is in eval mode (it is, on purpose)."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=Warning,
                            module=r"pytorch_lightning\.utilities\._pytree")
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode", module=r"pytorch_lightning\..*")
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages("💡 Tip"))
