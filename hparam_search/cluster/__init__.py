"""Running one study on a cluster scheduler (Slurm)."""
