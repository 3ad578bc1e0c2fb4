"""The options that choose and tune a launcher, shared by every command that launches a federation
(`cofe run`, `cofe evaluate`), and the init options that `cofe run` and `cofe demo` share with
`cofe init`: defined once so that they read and behave the same everywhere. Not a command itself."""

from __future__ import annotations

import typer

CONTAINERS = typer.Option(False, "--containers", help="Every participant in a container of cofe's image, on one bridge network.")
IMAGE = typer.Option(None, "--image", help="With --containers: the image (default: cofe:VERSION, see `cofe image build`).")
GPUS = typer.Option(None, "--gpus", help="With --containers: GPUs for the collaborators (all, a count, or device=0,1).")
SLURM = typer.Option(False, "--slurm", help="Every participant as a job of a Slurm cluster (FED on a filesystem all nodes share).")
PARTITION = typer.Option(None, "--partition", help="With --slurm: the partition (default: the cluster's).")
ACCOUNT = typer.Option(None, "--account", help="With --slurm: the account to charge.")
TIME_LIMIT = typer.Option(None, "--time", help="With --slurm: each job's time limit, e.g. 02:00:00.")
MEM_PER_SITE = typer.Option(None, "--mem-per-site", help="With --slurm: memory of each job, e.g. 4G.")
CPUS_PER_SITE = typer.Option(1, "--cpus-per-site", help="With --slurm: CPUs of each collaborator's job (also its OMP_NUM_THREADS).")
GPUS_PER_SITE = typer.Option(None, "--gpus-per-site", help="With --slurm: GPUs of each collaborator's job (it then trains on cuda).")
SBATCH_ARG = typer.Option(None, "--sbatch-arg", help="With --slurm: one more sbatch option, e.g. --sbatch-arg=--qos=high (repeatable).")
WORKERS = typer.Option(None, "--workers", help="Run the collaborators in this many shared processes (one site's task at a "
                       "time in each; every site keeps its own certificate, TLS channel, data and log) instead of one process each.")
TIMEOUT = typer.Option(None, "--timeout", help="Stop everything if not done after this many seconds.")

# Options of `cofe init` that `cofe run` and `cofe demo` also take (they initialise a federation when there is none).
VALIDATION_BATCH = typer.Option("auto", "--validation-batch", help="Validation patches per forward pass: a number, auto (sized from the memory available) or gandlf (GaNDLF's own patch-by-patch validation).")
LOCAL_VALIDATION = typer.Option("on", "--local-validation", help="on: every round also validates the locally tuned model (after training); off: only the aggregated model (a third less work per round).")
