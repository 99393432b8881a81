"""Hydra finds launchers only in the ``hydra_plugins`` package: protoscope's SLURM launcher (the logic is
in :mod:`protoscope.slurm`), the target of ``conf/hydra/launcher/slurm.yaml``."""

from protoscope.slurm import SlurmLauncher


class ProtoscopeSlurmLauncher(SlurmLauncher):
    """hydra-submitit-launcher's SLURM launcher with one-line sbatch refusals and squeue-based job states."""
