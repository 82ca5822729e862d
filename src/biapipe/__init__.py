"""biapipe: deep-learning bioimage analysis as a Snakemake workflow.

The library is importable and testable without Snakemake; the workflow under
``workflow/`` only wires files to the functions defined here.
"""

__version__ = "0.1.0"
