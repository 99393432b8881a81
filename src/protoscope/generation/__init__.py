"""Generation: the optimisation of prototypes and feature visualisations.

``renderer`` runs it without a trainer; ``module`` wraps it for Lightning; ``pipeline`` is protoscope-generate's
job (rows, sharding, chunks, checkpoints, export). Submodules are imported on use, so that importing one
(e.g. the step context) does not pull in Lightning."""
