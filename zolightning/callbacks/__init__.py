"""Lightning callbacks of a fit: run health, graceful stops, the step progress bar, prediction files."""
