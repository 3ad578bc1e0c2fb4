"""Tiny real NIfTI volumes for the unit tests' data folders (SimpleITK writes them; no torch)."""

from __future__ import annotations

from pathlib import Path


def write_volume(path: Path, shape: tuple[int, ...] = (16, 16, 16)) -> Path:
    """A zero-filled uint8 volume of `shape` (x, y, z) voxels (the unit configs' patch is 16x16x16)."""
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.Image(list(shape), sitk.sitkUInt8), str(path))
    return path
