"""Export of a run as one diffusers pipeline with a model card."""
