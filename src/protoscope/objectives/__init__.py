"""Objectives: per-row losses on the logits (lower is better)."""

from .terms import Antitype, Hybrid, Logit, LogProb, Objective, probability_variance

__all__ = ["Objective", "Logit", "LogProb", "Antitype", "Hybrid", "probability_variance"]
