"""Turning a third-party reader's failures and raw cells into the project's one-line errors."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from spin_diffusion.data.problems import (
    BadExample,
)
from spin_diffusion.errors import DataError


def guarded(rows: Iterable[Any], what: str) -> Iterator[Any]:
    """Iterate a third-party reader, turning its failures into one-line DataErrors."""
    it = iter(rows)
    while True:
        try:
            row = next(it)
        except StopIteration:
            return
        except (DataError, BadExample):
            raise
        except Exception as exc:  # noqa: BLE001 - any reader failure becomes a clean message
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"{what}: reading failed: {first}") from None
        yield row


def missing_column(where: str, column: str, field: str, available: Iterable[str]) -> DataError:
    cols = ", ".join(sorted(available)) or "none"
    return DataError(f"{where}: column '{column}' (data.{field}) not found; available columns: {cols}")


def raw_image_cells(ds: Any, columns: Iterable[str]) -> Any:
    """Ask ``datasets`` for raw image cells so decoding (and its errors) happens in ``load_image``."""
    import datasets

    features = getattr(ds, "features", None) or {}
    for col in columns:
        if isinstance(features.get(col), datasets.Image):
            ds = ds.cast_column(col, datasets.Image(decode=False))
    return ds
