"""Comparison harness: grids of fits (methods × tasks × lrs × seeds), resumable, with tables and plots."""

from zolightning.compare.grid import Grid, GridError, RunSpec
from zolightning.compare.runner import GridRunner

__all__ = ["Grid", "GridError", "GridRunner", "RunSpec"]
