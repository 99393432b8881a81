"""Studies: many runs brought together. Run folders -> tables -> figures -> one report."""

from .runs import RunInfo, find_run_dirs, load_run, parse_overrides, run_metrics

__all__ = ["RunInfo", "find_run_dirs", "load_run", "parse_overrides", "run_metrics"]
