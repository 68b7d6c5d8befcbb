"""Pure tensor math: per-sample errors in, losses out. Imports nothing else of the package."""
