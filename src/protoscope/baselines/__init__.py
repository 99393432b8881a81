"""Baselines rendered by other feature-visualisation libraries, written as protoscope run folders."""
