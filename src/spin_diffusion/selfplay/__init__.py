"""The self-play driver: iterations of sample -> train -> evaluate, the run directory, validation images."""
