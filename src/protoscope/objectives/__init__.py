"""Everything the optimisation minimises is a :class:`Term` (per-row loss, composed by arithmetic):
class objectives on the logits, feature targets inside the network, and the regularisers."""

from .algebra import Sum, Term, weighted_terms
from .features import Channel, Direction, LayerEnergy, LayerTerm, Neuron, load_direction
from .terms import Antitype, Hybrid, Logit, LogProb, Objective, ProbabilityVariance, probability_variance

__all__ = ["Term", "Sum", "weighted_terms", "Objective", "Logit", "LogProb", "Antitype", "Hybrid", "ProbabilityVariance",
           "probability_variance", "LayerTerm", "Channel", "Neuron", "Direction", "LayerEnergy", "load_direction"]
