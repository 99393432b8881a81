"""SLURM through Hydra's submitit launcher, with what a real cluster needs on top of it.

``hydra/launcher=slurm`` (``conf/hydra/launcher/slurm.yaml``) targets :class:`SlurmLauncher`, which is
hydra-submitit-launcher's, plus:

- an sbatch refusal is one line naming the setting to change (not submitit's traceback);
- without SLURM accounting (``sacct`` fails) job states come from ``squeue``, so the log does not repeat
  submitit's sacct warning at every poll and a job that ends without a result (``scancel``, a lost node)
  is noticed: it is one line saying how to resume it, and the sweep goes on (its value is NaN);
- the preset's resolvers (:mod:`protoscope.slurm_resources`) ask for GPUs only when the trainer uses
  them, and for one SLURM task per rank only when the ranks are not spawned by the first process.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import subprocess
import typing as tp
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _SubmititSlurmLauncher

log = logging.getLogger("protoscope")

# sbatch's refusal -> the setting to change (first match wins)
_FIXES = (
    ("generic resource", "the job asks for GPUs the partition does not have: use trainer=cpu on a CPU "
                         "partition, or set partition (conf/site/slurm.yaml) to one with GPUs"),
    ("partition", "set partition in conf/site/slurm.yaml (or hydra.launcher.partition=) to one `sinfo` lists"),
    ("account", "set account in conf/site/slurm.yaml (or hydra.launcher.account=) to one of yours "
                "(`sacctmgr show assoc user=$USER`)"),
    ("qos", "set qos in conf/site/slurm.yaml (or hydra.launcher.qos=) to one your account may use"),
    ("time limit", "lower timeout_min (hydra.launcher.timeout_min=) to the partition's limit (`sinfo -o %l`)"),
    ("memory", "lower mem_gb (hydra.launcher.mem_gb=) to what a node of the partition has"),
    ("node configuration", "ask for less: cpus_per_task, mem_gb, tasks_per_node or GPUs "
                           "(hydra.launcher.<setting>=) must fit one node of the partition"),
    ("more processors", "lower cpus_per_task or tasks_per_node (hydra.launcher.<setting>=) to fit a node"),
)


def refusal_message(stderr: str) -> str:
    """One line for sbatch's refusal: sbatch's own reason and the setting to change."""
    lines = [ln.split("error:", 1)[-1].strip() for ln in stderr.splitlines() if ln.strip()]
    reason = "; ".join(dict.fromkeys(ln for ln in lines if ln)) or "no reason given"
    low = reason.lower()
    fix = next((f for key, f in _FIXES if key in low), "check the hydra.launcher settings and conf/site/slurm.yaml")
    return f"sbatch refused the jobs ({reason}): {fix}"


def accounting_available() -> bool:
    """Whether ``sacct`` answers (it fails when the cluster keeps no accounting)."""
    try:
        subprocess.run(["sacct", "-n", "-X", "-j", "1", "-o", "JobID"], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def _squeue_watcher(delay_s: int) -> Any:
    from submitit.slurm.slurm import SlurmInfoWatcher

    class SqueueWatcher(SlurmInfoWatcher):
        """Job states from ``squeue`` (for clusters without accounting). A job squeue no longer lists has
        ended (``GONE``); whether it left a result is the result file's business."""

        def _make_command(self) -> tp.Optional[tp.List[str]]:
            if not self._registered - self._finished:
                return None
            return ["squeue", "--me", "-h", "-r", "-a", "-o", "%i|%T|%N"]

        def read_info(self, string: tp.Union[bytes, str]) -> tp.Dict[str, tp.Dict[str, str]]:
            text = string.decode() if isinstance(string, bytes) else string
            listed = {}
            for line in text.splitlines():
                parts = line.strip().split("|")
                if len(parts) == 3:
                    listed[parts[0]] = {"JobID": parts[0], "State": parts[1], "NodeList": parts[2]}
            gone = {"JobID": "", "State": "GONE", "NodeList": ""}
            return {job: listed.get(job, {**gone, "JobID": job}) for job in self._registered} | listed

    return SqueueWatcher(delay_s=delay_s)


class SlurmLauncher(_SubmititSlurmLauncher):
    """hydra-submitit-launcher's SLURM launcher with one-line refusals and squeue-based states."""

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        _requeue_then_save()
        return super().__call__(*args, **kwargs)

    def launch(self, job_overrides: tp.Sequence[tp.Sequence[str]], initial_job_idx: int) -> tp.Sequence[JobReturn]:
        import submitit
        from submitit.slurm.slurm import SlurmJob

        from .cli import fail, print_error
        from .errors import ConfigError

        if not accounting_available() and not hasattr(SlurmJob.watcher, "_protoscope"):
            SlurmJob.watcher = _squeue_watcher(delay_s=30)
            SlurmJob.watcher._protoscope = True
            log.info("SLURM keeps no accounting: job states come from squeue")
        jobs: list[Any] = []
        original = submitit.AutoExecutor.map_array

        def remember(executor: Any, fn: Any, *iterable: Any) -> Any:
            stderr = io.StringIO()  # submitit prints sbatch's stderr before raising: keep it for one line
            try:
                with contextlib.redirect_stderr(stderr):
                    jobs.extend(original(executor, fn, *iterable))
            except submitit.core.utils.FailedJobError as exc:
                fail(ConfigError(refusal_message(str(exc) or stderr.getvalue())))
            first = jobs[0].job_id.split("_")[0] if jobs else "?"
            log.info("Submitted %d job(s) as SLURM job %s (array %s_[0-%d]); logs in %s", len(jobs), first,
                     first, len(jobs) - 1, self.params["submitit_folder"])
            return _Results(jobs, initial_job_idx, str(self.config.hydra.sweep.dir), print_error)

        submitit.AutoExecutor.map_array = remember  # type: ignore[method-assign]
        try:
            return super().launch(job_overrides, initial_job_idx)
        finally:
            submitit.AutoExecutor.map_array = original  # type: ignore[method-assign]


def _requeue_then_save() -> None:
    """In the job: submitit's handler of the time-limit signal (USR2) requeues the job and then exits at
    once, in the middle of a step. Keep the requeue but not the exit: the requeue makes SLURM send
    SIGTERM, on which protoscope finishes the step, saves the state and ends (it resumes when requeued)."""
    import signal

    from submitit.core.job_environment import SignalHandler
    from submitit.slurm.slurm import SlurmJobEnvironment

    handler = signal.getsignal(SlurmJobEnvironment._usr_sig())
    owner = getattr(handler, "__self__", None)
    if isinstance(owner, SignalHandler):
        owner._exit = lambda: log.info("requeued: the state is saved on the SIGTERM that follows")  # type: ignore


class _Results(list):
    """The jobs as the base launcher reads them (``[j.results()[0] for j in jobs]``), where a job that
    ended without a result becomes one line and NaN instead of submitit's 40-line error."""

    def __init__(self, jobs: list[Any], first_idx: int, sweep_dir: str, report: tp.Callable[[str], None]) -> None:
        super().__init__(_Job(j, first_idx + i, sweep_dir, report) for i, j in enumerate(jobs))


class _Job:
    def __init__(self, job: Any, idx: int, sweep_dir: str, report: tp.Callable[[str], None]) -> None:
        self.job, self.idx, self.sweep_dir, self.report = job, idx, sweep_dir, report

    def results(self) -> list[JobReturn]:
        from submitit.core.utils import UncompletedJobError

        try:
            return self.job.results()
        except UncompletedJobError:
            state = self.job.watcher.get_state(self.job.job_id, mode="cache")
            self.report(f"job {self.idx} (SLURM {self.job.job_id}) ended without a result ({state}); its state "
                        f"is saved in {Path(self.sweep_dir) / str(self.idx)}: run the same command with "
                        f"hydra.sweep.dir={self.sweep_dir} to resume it (completed jobs are skipped)")
            ret = JobReturn()
            ret.status, ret.return_value = JobStatus.COMPLETED, math.nan
            return [ret]
