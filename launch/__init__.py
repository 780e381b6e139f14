"""Cluster launchers: local processes, SLURM, TPU VM pods, Kubernetes JobSets (see WORKSPACE.md)."""
