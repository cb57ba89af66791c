"""Reads results folders and never trains. `analysis.load(results_dir)` -> tidy pandas DataFrames."""
from .results import load

__all__ = ["load"]
