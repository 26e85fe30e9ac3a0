"""Slurm array job templates rendered by `batchseg submit`."""
