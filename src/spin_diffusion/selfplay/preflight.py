"""Start-of-run checks on where things live, made before the run directory is touched."""

from __future__ import annotations

from pathlib import Path

from spin_diffusion.config.run import RunConfig
from spin_diffusion.errors import ConfigError
from spin_diffusion.infra.run_layout import RunLayout

_WALKED_SOURCES = ("imagefolder", "hf_disk", "hf")  # sources whose whole directory is fingerprinted


def check_output_outside_data(cfg: RunConfig) -> None:
    """Refuse a run directory inside ``data.path``: its own files would change the data's fingerprint.

    The first run would succeed and every later start would be refused as
    "the data changed", so the layout is refused before anything is written.
    """
    data = cfg.data
    if data.source not in _WALKED_SOURCES:
        return
    data_dir = Path(data.path).resolve()
    if not data_dir.is_dir():
        return
    run_dir = cfg.run_dir.resolve()
    if run_dir == data_dir or run_dir.is_relative_to(data_dir):
        raise ConfigError(
            f"output_dir {cfg.output_dir}: the run directory {cfg.run_dir} lies inside data.path {data.path}, "
            "so the run's own files would count as changed data; put output_dir outside data.path"
        )


def nothing_to_train(cfg: RunConfig) -> bool:
    """True when every iteration is finished: the saved config.yaml then stays as the run was trained.

    A no-op start with changed settings (``--set training.learning_rate=...``)
    must not rewrite the config that ``export`` ships with values that never ran.
    """
    layout = RunLayout(cfg.run_dir)
    return layout.config.is_file() and all(
        layout.iteration(k).done.is_file() for k in range(1, len(cfg.iterations) + 1)
    )
