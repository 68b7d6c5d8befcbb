"""Studies on the toy world (reproduction, method comparison, the demo) and their reports."""
