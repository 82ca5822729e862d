"""The Snakemake layer: one function per rule (stages), parse-time helpers (smk), cluster glue (slurm)."""
