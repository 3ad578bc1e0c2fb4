"""The demo's synthetic sites: files GaNDLF can read, binary lesions, scanner differences."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cofe_cli.demo.synthetic import (
    CSV_HEADER,
    demo_gandlf_config,
    make_demo_federation_data,
    make_site_dataset,
)

SHAPE = (16, 16, 16)  # small keeps the tests fast; the demo itself uses 32^3


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def brain_intensities(site_dir: Path) -> np.ndarray:
    rows = read_csv(site_dir / "train.csv")[1:]
    volumes = [np.asarray(nib.load(site_dir / image).dataobj) for _, image, _ in rows]
    return np.concatenate([volume[volume > 0] for volume in volumes]).astype(float)


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("demo")
    return make_demo_federation_data(root, ["hospital_a", "hospital_b", "hospital_c"], n_train=3, n_valid=2, shape=SHAPE)


def test_one_folder_per_site(sites):
    assert list(sites) == ["hospital_a", "hospital_b", "hospital_c"]
    assert all(folder.is_dir() and folder.name == name for name, folder in sites.items())


def test_csvs_list_every_subject_with_relative_paths(sites):
    for folder in sites.values():
        train, valid = read_csv(folder / "train.csv"), read_csv(folder / "valid.csv")
        assert tuple(train[0]) == tuple(valid[0]) == CSV_HEADER == ("SubjectID", "Channel_0", "Label")
        assert (len(train) - 1, len(valid) - 1) == (3, 2)
        subject_ids = [row[0] for row in train[1:] + valid[1:]]
        assert len(set(subject_ids)) == 5
        for _, image, label in train[1:] + valid[1:]:
            assert not Path(image).is_absolute() and (folder / image).is_file()
            assert (folder / label).is_file()


def test_subject_ids_differ_between_sites(sites):
    ids = [row[0] for folder in sites.values() for row in read_csv(folder / "train.csv")[1:]]
    assert len(ids) == len(set(ids))


def test_labels_are_binary_non_empty_and_inside_the_image(sites):
    for folder in sites.values():
        for _, image_path, label_path in read_csv(folder / "train.csv")[1:]:
            image = nib.load(folder / image_path)
            label = np.asarray(nib.load(folder / label_path).dataobj)
            assert image.shape == label.shape == SHAPE
            assert set(np.unique(label)) == {0, 1}
            assert np.all(np.asarray(image.dataobj)[label == 1] > 0)


def test_lesions_are_brighter_than_their_surroundings(sites):
    folder = sites["hospital_a"]
    for _, image_path, label_path in read_csv(folder / "train.csv")[1:]:
        image = np.asarray(nib.load(folder / image_path).dataobj).astype(float)
        label = np.asarray(nib.load(folder / label_path).dataobj)
        assert image[label == 1].mean() > image[(label == 0) & (image > 0)].mean()


def test_same_seed_same_images_other_seed_other_images(tmp_path):
    def first_image(folder: Path, seed: int) -> np.ndarray:
        make_site_dataset(folder, site_index=1, n_train=1, n_valid=1, shape=SHAPE, seed=seed)
        return np.asarray(nib.load(folder / read_csv(folder / "train.csv")[1][1]).dataobj)

    assert np.array_equal(first_image(tmp_path / "one", 7), first_image(tmp_path / "two", 7))
    assert not np.array_equal(first_image(tmp_path / "one", 7), first_image(tmp_path / "three", 8))


def test_sites_differ_in_intensity_statistics(sites):
    stats = [brain_intensities(folder) for folder in sites.values()]
    means = sorted(values.mean() for values in stats)
    # Different scanners, not sampling noise: neighbouring means are far apart.
    assert all(high > 1.3 * low for low, high in zip(means, means[1:]))


def test_module_does_not_import_torch_or_gandlf():
    code = "import sys, cofe_cli.demo.synthetic; print('torch' in sys.modules, 'GANDLF' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_demo_config_is_a_small_3d_binary_segmentation():
    config = demo_gandlf_config()
    model = config["model"]
    assert config["version"] == {"minimum": "0.1.5", "maximum": "0.1.5"}
    assert config["modality"] == "rad"
    assert model["dimension"] == 3 and model["num_channels"] == 1
    assert model["class_list"] == [0, 1]
    assert model["base_filters"] <= 8
    assert config["patch_size"] == [32, 32, 32]
    assert config["batch_size"] == 1 and config["num_epochs"] == 1
    assert config["q_max_length"] >= config["q_samples_per_volume"]
    assert config["loss_function"] == "dc" and config["metrics"] == ["dice"]
    assert config["output_dir"] == "."
    assert config["nested_training"] == {"testing": -5, "validation": -5}
    assert config["in_memory"] is True
    assert config["parallel_compute_command"] == ""
    assert "clip_mode" not in config or config["clip_mode"] is not None


def test_demo_config_is_a_fresh_copy_each_time():
    config = demo_gandlf_config()
    config["model"]["base_filters"] = 64
    assert demo_gandlf_config()["model"]["base_filters"] != 64
