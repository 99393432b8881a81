"""Auditing one model with no data (``protoscope-audit``): mark screening over all classes, detection per
prototype, class entanglement, patch prototypes and shortcut candidates. Import-light: submodules load on use.

- :mod:`.carriers`: the images a mark is pasted onto (equidistant baselines, plain images, prototypes, photos)
- :mod:`.screening`: rank every class by the mark's logit / log-prob gain over the carriers
- :mod:`.detection`: score each prototype of a run for the mark (position-free)
- :mod:`.entanglement`: how much each class's prototypes raise every other class
- :mod:`.patches`, :mod:`.candidates`: patch prototypes, and the patches that flip other classes to theirs
  (the tasks ``patches`` and ``candidates``: :mod:`.patch_tasks`)
- :mod:`.tasks`: the task registry (``task=``), :mod:`.run`: the job, :mod:`.command`: the entry point
"""

__all__ = ["run_audit"]


def __getattr__(name: str):
    if name == "run_audit":
        from .run import run_audit

        return run_audit
    raise AttributeError(f"module 'protoscope.audit' has no attribute {name!r}")
