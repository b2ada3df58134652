"""The table `crosssite sweep --launcher` chooses from: how a sweep's jobs are executed.

Apart from sweep.py so that the sweep never imports the Slurm launcher, which imports the sweep's jobs.
"""

from .sweep import LocalLauncher


def _slurm_launcher(**options):
    from .slurm import SlurmLauncher  # submitit is imported only when a sweep goes to Slurm

    return SlurmLauncher(**options)


#: name -> factory of an object with check() and run(todo, out), which yields (job, record) as jobs end
LAUNCHERS = {"local": LocalLauncher, "slurm": _slurm_launcher}
