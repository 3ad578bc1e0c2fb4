"""Synthetic multi-site data for `cofe demo`: small 3D MRI-like volumes with lesions to segment.

Every site plays a hospital whose scanner has its own intensity scale, offset, lesion contrast,
noise level and bias-field strength, so a federation sees the non-IID intensities real sites
have. Only numpy and nibabel are imported: generating data must not pay torch's import cost.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

CSV_HEADER = ("SubjectID", "Channel_0", "Label")
IMAGE_NAME = "image.nii.gz"
LABEL_NAME = "label.nii.gz"
GANDLF_VERSION = "0.1.5"


@dataclass(frozen=True)
class ScannerProfile:
    """How one site's scanner turns tissue into stored intensities."""

    scale: float  # stored units of healthy tissue; vendors and sequences disagree wildly
    offset: float
    lesion_contrast: float  # extra brightness of a lesion, relative to tissue
    noise: float  # noise standard deviation, relative to tissue
    bias: float  # strength of the smooth multiplicative bias field (coil inhomogeneity)


def scanner_profile(site_index: int, seed: int) -> ScannerProfile:
    rng = np.random.default_rng([seed, site_index, 0])
    return ScannerProfile(
        # The scale grows geometrically with the site index so neighbouring sites differ
        # clearly; it cycles to keep every stored value well inside int16.
        scale=150.0 * 1.6 ** (site_index % 6) * rng.uniform(0.95, 1.05),
        offset=rng.uniform(0.0, 100.0),
        lesion_contrast=rng.uniform(0.7, 1.1),
        noise=rng.uniform(0.05, 0.15),
        bias=rng.uniform(0.05, 0.2),
    )


def _smooth_field(rng: np.random.Generator, grid: np.ndarray, frequency: float, waves: int = 6) -> np.ndarray:
    """Sum of random plane waves: a cheap smooth random field of roughly unit amplitude."""
    field = np.zeros(grid.shape[1:])
    for _ in range(waves):
        direction = rng.normal(size=3) * frequency
        field += np.cos(np.tensordot(direction, grid, axes=1) + rng.uniform(0, 2 * np.pi))
    return field * np.sqrt(2.0 / waves)


def _ellipsoid(grid: np.ndarray, center: np.ndarray, radii: np.ndarray) -> np.ndarray:
    offsets = (grid - center[:, None, None, None]) / radii[:, None, None, None]
    return (offsets**2).sum(axis=0) <= 1.0


def make_subject(
    shape: tuple[int, int, int], profile: ScannerProfile, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One skull-stripped-looking volume (int16) and its binary lesion mask (uint8)."""
    size = np.array(shape, dtype=float)
    grid = np.indices(shape, dtype=float)
    unit_grid = grid / size[:, None, None, None] * 2 - 1  # [-1, 1] per axis, for the fields

    brain = _ellipsoid(grid, (size - 1) / 2, size / 2 * rng.uniform(0.85, 0.97, size=3))
    # Two tissue classes in a folded pattern give the background structure, not only noise.
    tissue = np.where(_smooth_field(rng, unit_grid, frequency=4.0) > 0, 1.0, 0.75)
    tissue *= 1 + 0.08 * _smooth_field(rng, unit_grid, frequency=9.0)

    lesions = np.zeros(shape, dtype=bool)
    for _ in range(rng.integers(1, 4)):
        center = size / 2 + rng.uniform(-0.22, 0.22, size=3) * size
        lesions |= _ellipsoid(grid, center, rng.uniform(0.07, 0.17, size=3) * size)
    lesions &= brain

    signal = tissue + profile.lesion_contrast * lesions
    bias = _smooth_field(rng, unit_grid, frequency=2.0)
    bias_field = np.exp(profile.bias * (bias - bias[brain].mean()))  # shading, not a global gain
    noisy = signal * bias_field + profile.noise * rng.standard_normal(shape)
    # Values inside the brain stay >= 1 so GaNDLF's non-zero normalisation sees the whole brain.
    stored = np.where(brain, np.maximum(noisy * profile.scale + profile.offset, 1.0), 0.0)
    image = np.clip(np.rint(stored), 0, np.iinfo(np.int16).max).astype(np.int16)
    return image, lesions.astype(np.uint8)


def _save_nifti(array: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(array, affine=np.eye(4))  # 1 mm isotropic voxels
    image.header.set_xyzt_units("mm")
    nib.save(image, path)


def make_site_dataset(
    out_dir: Path,
    *,
    site_index: int,
    n_train: int,
    n_valid: int,
    shape: tuple[int, int, int] = (32, 32, 32),
    seed: int,
) -> Path:
    """Write subjects under `out_dir/<subject>/` and GaNDLF's `train.csv` and `valid.csv`.

    CSV paths are relative to the CSV's folder (GaNDLF 0.1.5 resolves them there), so the
    folder can be moved or mounted elsewhere.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    profile = scanner_profile(site_index, seed)
    rows = []
    for number in range(n_train + n_valid):
        # Subject ids carry the site: GaNDLF first tries a relative path against the current
        # directory, so ids shared between sites could pick up another site's file.
        subject_id = f"site{site_index:02d}_sub{number:03d}"
        image, label = make_subject(shape, profile, np.random.default_rng([seed, site_index, number + 1]))
        (out_dir / subject_id).mkdir(exist_ok=True)
        _save_nifti(image, out_dir / subject_id / IMAGE_NAME)
        _save_nifti(label, out_dir / subject_id / LABEL_NAME)
        rows.append((subject_id, f"{subject_id}/{IMAGE_NAME}", f"{subject_id}/{LABEL_NAME}"))
    for csv_name, subset in (("train.csv", rows[:n_train]), ("valid.csv", rows[n_train:])):
        with open(out_dir / csv_name, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(CSV_HEADER)
            writer.writerows(subset)
    return out_dir


def make_demo_federation_data(
    root: Path,
    sites: list[str],
    *,
    seed: int = 0,
    n_train: int = 10,
    n_valid: int = 3,
    shape: tuple[int, int, int] = (32, 32, 32),
) -> dict[str, Path]:
    """One dataset folder per site under `root`, each from a different scanner; name -> folder."""
    return {
        name: make_site_dataset(
            Path(root) / name, site_index=index, n_train=n_train, n_valid=n_valid, shape=shape, seed=seed
        )
        for index, name in enumerate(sites)
    }


def demo_gandlf_config() -> dict:
    """A GaNDLF 0.1.5 training config small enough for a federated round in seconds on 2 CPU cores."""
    return {
        "version": {"minimum": GANDLF_VERSION, "maximum": GANDLF_VERSION},
        "modality": "rad",
        "model": {
            "dimension": 3,
            # Three levels instead of resunet's four: half the compute, and validation followed
            # training more closely. GaNDLF's instance norms evaluate with running statistics,
            # which a 2^3 bottleneck (32^3 over four levels) estimates poorly.
            "architecture": "resunet_multilayer",
            "depth": 3,
            "base_filters": 8,
            "class_list": [0, 1],
            "final_layer": "softmax",
            "norm_type": "instance",
            "num_channels": 1,
            "amp": False,  # CPU
            # Reported Dice is the lesion's alone; background Dice (~0.99) would hide progress.
            "ignore_label_validation": 0,
            "print_summary": False,
        },
        "patch_size": [32, 32, 32],  # the whole demo volume: one patch per sample
        "patch_sampler": "uniform",
        "batch_size": 1,
        "num_epochs": 1,  # OpenFL calls GaNDLF for one epoch per round
        # Each volume twice per epoch: 20 steps a round on 10 subjects, Dice rises every round.
        "q_samples_per_volume": 2,
        # Room for all training samples, so shuffling mixes subjects instead of taking steps in a
        # row on one volume, which overfits it (and torchio crashes below q_samples_per_volume).
        "q_max_length": 48,
        "q_num_workers": 0,
        "q_verbose": False,
        "in_memory": True,
        "loss_function": "dc",
        "weighted_loss": True,  # lesions are a few percent of the voxels
        "metrics": ["dice"],
        "optimizer": {"type": "adam"},
        # 0.005 and above sometimes collapsed to all-background; 0.002 learnt visibly slower.
        "learning_rate": 0.003,
        # A constant learning rate: GaNDLF steps its scheduler at every validation, which OpenFL
        # runs twice a round, and 'triangle' with its default step size jumps about at random.
        "scheduler": {"type": "exponential", "gamma": 1.0},
        # Z-score over the brain removes each scanner's scale and offset.
        "data_preprocessing": {"normalize_nonZero": None},
        "data_augmentation": {},
        "data_postprocessing": {},
        "inference_mechanism": {"grid_aggregator_overlap": "crop", "patch_overlap": 0},
        # The sites' CSVs are already split, so GaNDLF's own k-fold split never runs.
        "nested_training": {"testing": -5, "validation": -5},
        "output_dir": ".",  # GaNDLF's validation needs it
        "parallel_compute_command": "",
        "patience": 1,
        "save_output": False,
        "save_training": False,
        "track_memory_usage": False,
        "verbose": False,
    }
