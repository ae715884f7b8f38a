"""Checkpoints: weights-only reads and file checks, and the run record a checkpoint carries."""
