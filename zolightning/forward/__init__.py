"""Scoring batches: candidate scores and losses, greedy generation, the compiled fast forward and the path choice."""
