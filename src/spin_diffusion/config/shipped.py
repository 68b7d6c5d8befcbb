"""The example configs shipped inside the package, so ``pip install`` users have them too.

They live in ``spin_diffusion/configs/`` (the repository's ``configs/`` links
there); ``spin-diffusion configs list`` shows them and ``spin-diffusion configs
copy`` writes them where the user will edit and run them. Paths inside them are
relative to the directory a run starts in, and the toy configs name the shipped
toy model by its alias ``toy-base``, so they work from any directory.
"""

from __future__ import annotations

import shutil
from importlib.resources import files
from pathlib import Path

from spin_diffusion.errors import ConfigError


def configs_dir() -> Path:
    """Where the shipped configs are installed."""
    return Path(str(files("spin_diffusion") / "configs"))


def shipped_configs() -> dict[str, Path]:
    """name (file stem) -> path of every shipped config, sorted by name."""
    return {p.stem: p for p in sorted(configs_dir().glob("*.yaml"))}


def describe(path: Path) -> str:
    """The first comment line of a config: what it is for."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def copy_configs(names: list[str], dest: Path, overwrite: bool = False) -> list[Path]:
    """Copy the named configs (all when ``names`` is empty) into ``dest``; never overwrites unless asked."""
    available = shipped_configs()
    unknown = [n for n in names if n.removesuffix(".yaml") not in available]
    if unknown:
        raise ConfigError(f"no shipped config named {', '.join(unknown)} (there are: {', '.join(available)})")
    chosen = [available[n.removesuffix(".yaml")] for n in names] or list(available.values())
    targets = [Path(dest) / p.name for p in chosen]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        verb = "exists" if len(existing) == 1 else "exist"
        raise ConfigError(f"{', '.join(existing)} already {verb}; pass --overwrite to replace")
    Path(dest).mkdir(parents=True, exist_ok=True)
    for src, target in zip(chosen, targets, strict=True):
        shutil.copyfile(src, target)
    return targets
