"""The ZO engine: the parameter walk, the noise, the passes, the skip counters and the step graphs."""
