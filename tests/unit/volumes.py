"""Tiny real data for the unit tests' data folders: NIfTI volumes (SimpleITK writes them; no torch) and CSVs."""

from __future__ import annotations

import csv
from pathlib import Path


def write_volume(path: Path, shape: tuple[int, ...] = (16, 16, 16)) -> Path:
    """A zero-filled uint8 volume of `shape` (x, y, z) voxels (the unit configs' patch is 16x16x16)."""
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.Image(list(shape), sitk.sitkUInt8), str(path))
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    """A CSV (a GaNDLF data CSV, a study or partitioning CSV) with `header` and `rows`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path
