"""Guided generation (an extension beyond the paper that uses a few photos of each class, and says so).

:func:`compute_guide_stats` measures, once per run, the per-layer feature distributions of ``N`` photos
of every class (per channel: quantiles, mean, standard deviation, relevance for the class);
:class:`SortMatch` and :class:`MomentMatch` pull a prototype's distributions towards those of its class.
:func:`attach_guide` does both for a composed config (``experiment=guided``), from the ``guide.part`` part
of the reference, disjoint from the part that scores the prototypes.
"""

from .attach import attach_guide, guided_terms, reference_photos
from .stats import GuideStats, compute_guide_stats, positions
from .terms import GuidedTerm, MomentMatch, SortMatch

__all__ = ["GuideStats", "compute_guide_stats", "positions", "GuidedTerm", "SortMatch", "MomentMatch",
           "attach_guide", "guided_terms", "reference_photos"]
