"""Slurm: render the array job script, submit it, reconcile the ledger with what Slurm says.

- `job_script`: the task's command line, the #SBATCH directives, quoting, the template.
- `submit`: how many tasks, the arrays under MaxArraySize, sbatch, the ledger's records.
- `reconcile`: squeue and sacct parsing, the rules that mark a running study lost, sync, cancel.
- `client`: one Slurm command call (timeout, SlurmError), Slurm's timestamps, the task's deadline.

This face is what the CLI, the report and the tests import; the rooms above import each other.
"""
from .client import SlurmError, allocation_deadline, parse_timestamp
from .job_script import load_template, render_script, sbatch_quote, task_command
from .reconcile import (ENDED_STATES, JobReport, SyncResult, TaskState, cancel, lost_class, lost_reason, parse_sacct,
                        parse_squeue, reclaim_after_requeue, sync)
from .submit import (DEFAULT_MAX_ARRAY_SIZE, DEFAULT_TASK_CAP, SubmitResult, default_tasks, max_array_size,
                     parse_duration, plan_arrays, submit_array)

__all__ = [
    "DEFAULT_MAX_ARRAY_SIZE", "DEFAULT_TASK_CAP", "ENDED_STATES", "JobReport", "SlurmError", "SubmitResult",
    "SyncResult", "TaskState", "allocation_deadline", "cancel", "default_tasks", "load_template", "lost_class",
    "lost_reason", "max_array_size", "parse_duration", "parse_sacct", "parse_squeue", "parse_timestamp",
    "plan_arrays", "reclaim_after_requeue", "render_script", "sbatch_quote", "submit_array", "sync", "task_command",
]
