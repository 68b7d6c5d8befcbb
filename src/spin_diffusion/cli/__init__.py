"""The command line: one sub-command per job (spin-diffusion --help)."""
