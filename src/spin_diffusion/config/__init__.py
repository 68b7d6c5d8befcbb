"""Typed, validated configuration: strict YAML, the run, data and evaluation configs, overrides, shipped configs."""
