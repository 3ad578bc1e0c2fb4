"""`cofe data split`'s logic: every mode, no subject leaking between sites or between train and valid,
the same split for the same seed, and every refusal; no torch (SimpleITK writes and reads the volumes)."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest
from cli_assertions import call_refused
from volumes import write_csv, write_volume

from cofe_cli.plan.data import check_data_folder
from cofe_cli.plan.data_split import (LESION, NO_LESION, Site, SplitMode, check_out_folder, check_split_options,
                                      label_balance, read_study, site_name, split_study, write_sites)


def lesion_mask(path: Path, lesion: bool) -> Path:
    import SimpleITK as sitk

    mask = sitk.Image([16, 16, 16], sitk.sitkUInt8)
    if lesion:
        mask[3, 4, 5] = 1
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(mask, str(path))
    return path


def segmentation_study(folder: Path, subjects: int, *, partitions: int = 3, lesion_every: int = 3,
                       rows_per_subject: int = 1) -> Path:
    """s00..sNN with relative image paths, a Partition_ID column, and a lesion in every `lesion_every`-th mask."""
    rows = []
    for number in range(subjects):
        subject = f"s{number:02d}"
        mask = lesion_mask(folder / "images" / subject / "seg.nii.gz", number % lesion_every == 0)
        for scan in range(rows_per_subject):
            image = write_volume(folder / "images" / subject / f"t1_{scan}.nii.gz")
            rows.append([subject, str(image.relative_to(folder)), str(mask.relative_to(folder)), str(number % partitions + 1)])
    return write_csv(folder / "all.csv", ["SubjectID", "Channel_0", "Label", "Partition_ID"], rows)


def classification_study(folder: Path, classes: list[str]) -> Path:
    """One subject per entry of `classes`, its ValueToPredict that class."""
    image = write_volume(folder / "images" / "scan.nii.gz")
    rows = [[f"c{number:02d}", str(image), label] for number, label in enumerate(classes)]
    return write_csv(folder / "all.csv", ["SubjectID", "Channel_0", "ValueToPredict"], rows)


def split(csv_path: Path, mode: SplitMode, *, valid_fraction: float = 0.2, seed: int = 0) -> list[Site]:
    check_split_options(mode, valid_fraction=valid_fraction, seed=seed)
    return split_study(read_study(csv_path), mode, valid_fraction=valid_fraction, seed=seed)


def assert_no_leakage(sites: list[Site], all_subjects: set[str]) -> None:
    """Every subject in exactly one site, and in its train or its valid part, never both; each site validates."""
    placed = Counter(subject for site in sites for subject in site.train + site.valid)
    assert set(placed) == all_subjects
    assert max(placed.values()) == 1, [s for s, n in placed.items() if n > 1]
    for site in sites:
        assert not set(site.train) & set(site.valid)
        assert site.train and site.valid, site


def subjects_of(csv_path: Path) -> set[str]:
    with open(csv_path, newline="") as handle:
        return {row["SubjectID"] for row in csv.DictReader(handle)}


# ---------------------------------------------------------------- the four modes


def test_by_column_makes_one_site_per_value_with_several_rows_of_a_subject_together(tmp_path: Path) -> None:
    study = segmentation_study(tmp_path, 12, partitions=3, rows_per_subject=2)
    sites = split(study, SplitMode(by="Partition_ID"))
    assert [site.name for site in sites] == ["site1", "site2", "site3"]
    assert_no_leakage(sites, subjects_of(study))
    for number, site in enumerate(sites):
        assert {int(s[1:]) % 3 for s in site.train + site.valid} == {number}
    out = tmp_path / "sites"
    write_sites(read_study(study), sites, out)
    with open(out / "site1" / "train.csv", newline="") as handle:
        train_rows = list(csv.DictReader(handle))
    assert len(train_rows) == 2 * len(sites[0].train), "both rows of a subject go with it"
    assert all(Path(row["Channel_0"]).is_absolute() and Path(row["Channel_0"]).is_file() for row in train_rows)


def test_partition_csv_in_feTS_format(tmp_path: Path) -> None:
    study = segmentation_study(tmp_path, 10, partitions=1)
    partition = write_csv(tmp_path / "partitioning_1.csv", ["Partition_ID", "Subject_ID"],
                          [[str(1 + number // 4), f"s{number:02d}"] for number in range(10)])
    sites = split(study, SplitMode(partition_csv=partition))
    assert [(site.name, len(site.train) + len(site.valid)) for site in sites] == [("site1", 4), ("site2", 4), ("site3", 2)]
    assert set(sites[2].train + sites[2].valid) == {"s08", "s09"}
    assert_no_leakage(sites, subjects_of(study))


def test_iid_sites_are_balanced_and_the_seed_decides(tmp_path: Path) -> None:
    study = segmentation_study(tmp_path, 20)
    sites = split(study, SplitMode(sites=4), valid_fraction=0.25, seed=7)
    assert_no_leakage(sites, subjects_of(study))
    assert [(len(site.train), len(site.valid)) for site in sites] == [(4, 1)] * 4
    assert split(study, SplitMode(sites=4), valid_fraction=0.25, seed=7) == sites
    assert split(study, SplitMode(sites=4), valid_fraction=0.25, seed=8) != sites


def test_the_split_does_not_depend_on_the_row_order(tmp_path: Path) -> None:
    study = segmentation_study(tmp_path, 12)
    lines = study.read_text().splitlines()
    reversed_study = tmp_path / "reversed.csv"
    reversed_study.write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    for mode in (SplitMode(sites=3), SplitMode(sites=3, dirichlet=1.0), SplitMode(by="Partition_ID")):
        assert split(study, mode, seed=3) == split(reversed_study, mode, seed=3)


def test_dirichlet_skews_classification_labels_and_is_deterministic(tmp_path: Path) -> None:
    study = classification_study(tmp_path, ["0"] * 30 + ["1"] * 30)
    skewed = split(study, SplitMode(sites=3, dirichlet=0.1), seed=1)
    assert_no_leakage(skewed, subjects_of(study))
    assert split(study, SplitMode(sites=3, dirichlet=0.1), seed=1) == skewed
    label = {f"c{number:02d}": "0" if number < 30 else "1" for number in range(60)}

    def share_of_class_1(site: Site) -> float:
        members = site.train + site.valid
        return sum(label[s] == "1" for s in members) / len(members)

    shares = [share_of_class_1(site) for site in skewed]
    assert max(shares) - min(shares) > 0.5, shares  # IID sites would each hold about one half
    near_iid = [share_of_class_1(site) for site in split(study, SplitMode(sites=3, dirichlet=1000.0), seed=1)]
    assert max(near_iid) - min(near_iid) < 0.2, near_iid


def test_dirichlet_for_segmentation_goes_by_lesion_presence(tmp_path: Path) -> None:
    study_csv = segmentation_study(tmp_path, 24, lesion_every=2)
    study = read_study(study_csv)
    assert study.problem_type == "segmentation"
    assert {s: study.label_of[s] for s in ("s00", "s01", "s02")} == {"s00": LESION, "s01": NO_LESION, "s02": LESION}
    sites = split(study_csv, SplitMode(sites=3, dirichlet=0.1), seed=2)
    assert_no_leakage(sites, subjects_of(study_csv))
    lesion_shares = [sum(study.label_of[s] == LESION for s in site.train + site.valid) / len(site.train + site.valid)
                     for site in sites]
    assert max(lesion_shares) - min(lesion_shares) > 0.5, lesion_shares


@pytest.mark.parametrize("fraction, valid", [(0.0, 1), (0.2, 2), (0.5, 5), (0.99, 9)])
def test_every_site_validates_on_at_least_one_subject_and_trains_on_one(tmp_path: Path, fraction: float, valid: int) -> None:
    study = segmentation_study(tmp_path, 20)
    sites = split(study, SplitMode(sites=2), valid_fraction=fraction)
    assert [len(site.valid) for site in sites] == [valid, valid]
    assert_no_leakage(sites, subjects_of(study))


def test_written_sites_are_data_folders_cofe_accepts(tmp_path: Path) -> None:
    study_csv = segmentation_study(tmp_path / "study", 8)
    study = read_study(study_csv)
    sites = split(study_csv, SplitMode(sites=2))
    out = tmp_path / "elsewhere" / "sites"
    write_sites(study, sites, out)
    assert sorted(p.name for p in out.iterdir()) == ["site1", "site2"]
    for site in sites:
        summary = check_data_folder(out / site.name, problem_type="segmentation", channels=1)
        assert (summary.train_subjects, summary.valid_subjects) == (len(site.train), len(site.valid))


def test_label_balance_lists_classes_and_counts_lesions(tmp_path: Path) -> None:
    classes = read_study(classification_study(tmp_path / "classes", ["1", "0", "1", "2"]))
    assert label_balance(classes, ("c00", "c01", "c02")) == "0: 1, 1: 2"
    many = read_study(classification_study(tmp_path / "regression", [str(n / 10) for n in range(12)]))
    assert label_balance(many, tuple(many.rows_of)) == "12 distinct values"
    lesions = read_study(segmentation_study(tmp_path / "masks", 6, lesion_every=3))
    assert label_balance(lesions, ("s00", "s01", "s02", "s03")) == "2/4"


@pytest.mark.parametrize("value, name", [("1", "site1"), ("07", "site07"), ("Hospital A", "hospital_a"),
                                         ("site-b", "site-b"), ("aggregator", "site_aggregator")])
def test_partition_values_become_collaborator_names(value: str, name: str) -> None:
    assert site_name(value) == name


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("mode, valid_fraction, seed, message", [
    (SplitMode(), 0.2, 0, "no way to split the subjects into sites was given"),
    (SplitMode(by="Partition_ID", sites=3), 0.2, 0, "--by and --sites are two ways to split"),
    (SplitMode(partition_csv=Path("p.csv"), by="x"), 0.2, 0, "--by and --partition-csv are two ways to split"),
    (SplitMode(dirichlet=0.5), 0.2, 0, "--dirichlet needs --sites N"),
    (SplitMode(sites=3, dirichlet=0.0), 0.2, 0, "--dirichlet must be greater than 0, got 0.0"),
    (SplitMode(sites=3, dirichlet=-1.0), 0.2, 0, "--dirichlet must be greater than 0"),
    (SplitMode(sites=3, dirichlet=float("nan")), 0.2, 0, "--dirichlet must be greater than 0"),
    (SplitMode(sites=0), 0.2, 0, "--sites must be between 1 and 10000, got 0"),
    (SplitMode(sites=3), 1.0, 0, "--valid-fraction must be at least 0 and below 1, got 1.0"),
    (SplitMode(sites=3), -0.1, 0, "--valid-fraction must be at least 0 and below 1"),
    (SplitMode(sites=3), 0.2, -1, "--seed must be between 0 and"),
    (SplitMode(by=" "), 0.2, 0, "--by names no column"),
])
def test_bad_options_are_refused_before_any_file_is_read(mode: SplitMode, valid_fraction: float, seed: int, message: str) -> None:
    assert message in call_refused(check_split_options, mode, valid_fraction=valid_fraction, seed=seed).message


def test_a_missing_by_column_is_refused(tmp_path: Path) -> None:
    study = segmentation_study(tmp_path, 6)
    assert "has no column 'Institution'" in call_refused(split, study, SplitMode(by="Institution")).message


def test_a_subject_whose_rows_name_two_partitions_is_refused(tmp_path: Path) -> None:
    study = segmentation_study(tmp_path, 6, rows_per_subject=2)
    lines = study.read_text().splitlines()
    lines[1] = lines[1][:-1] + "9"  # s00's first row in partition 9, its second in partition 1
    study.write_text("\n".join(lines) + "\n")
    assert "subject s00 is in 2 partitions (1, 9)" in call_refused(split, study, SplitMode(by="Partition_ID")).message


def test_partition_csv_with_unknown_or_missing_subjects_or_columns_is_refused(tmp_path: Path) -> None:
    study = segmentation_study(tmp_path, 6)
    header = ["Partition_ID", "Subject_ID"]
    everyone = [["1" if n < 3 else "2", f"s{n:02d}"] for n in range(6)]
    unknown = write_csv(tmp_path / "unknown.csv", header, everyone + [["2", "ghost"]])
    missing = write_csv(tmp_path / "missing.csv", header, everyone[:-1])
    twice = write_csv(tmp_path / "twice.csv", header, everyone + [["1", "s05"]])
    wrong_header = write_csv(tmp_path / "header.csv", ["Partition", "Subject_ID"], everyone)
    assert "lists 1 subject(s) that all.csv does not: ghost" in call_refused(split, study, SplitMode(partition_csv=unknown)).message
    assert "gives no partition to 1 subject(s) of all.csv: s05" in call_refused(split, study, SplitMode(partition_csv=missing)).message
    assert "subject s05 is in partitions 2 and 1" in call_refused(split, study, SplitMode(partition_csv=twice)).message
    assert "lacks column(s) Partition_ID" in call_refused(split, study, SplitMode(partition_csv=wrong_header)).message


def test_fewer_subjects_than_sites_need_is_refused(tmp_path: Path) -> None:
    study = segmentation_study(tmp_path, 5)
    error = call_refused(split, study, SplitMode(sites=3))
    assert "has 5 subject(s), too few for 3 sites" in error.message
    assert "--sites 2" in error.hint
    assert "too few for 6 sites" in call_refused(split, study, SplitMode(sites=6, dirichlet=1.0)).message


def test_a_partition_of_one_subject_is_refused_as_it_could_not_validate(tmp_path: Path) -> None:
    study = segmentation_study(tmp_path, 7, partitions=1)
    partition = write_csv(tmp_path / "p.csv", ["Partition_ID", "Subject_ID"],
                          [["1" if n < 6 else "2", f"s{n:02d}"] for n in range(7)])
    assert "1 site(s) would have fewer than 2 subjects" in call_refused(split, study, SplitMode(partition_csv=partition)).message


def test_partition_values_that_map_to_one_name_are_refused(tmp_path: Path) -> None:
    study = segmentation_study(tmp_path, 4, partitions=1)
    partition = write_csv(tmp_path / "p.csv", ["Partition_ID", "Subject_ID"],
                          [["Site A" if n < 2 else "site_a", f"s{n:02d}"] for n in range(4)])
    assert "would both be site 'site_a'" in call_refused(split, study, SplitMode(partition_csv=partition)).message


def test_an_impossible_dirichlet_draw_is_refused(tmp_path: Path) -> None:
    study = classification_study(tmp_path, ["0"] * 3 + ["1"] * 3)
    error = call_refused(split, study, SplitMode(sites=3, dirichlet=0.001))
    assert "gave each of the 3 sites 2 subjects" in error.message


def test_out_folder_that_is_not_empty_or_holds_the_data_is_refused(tmp_path: Path) -> None:
    study = read_study(segmentation_study(tmp_path / "study", 4))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine\n")
    assert "--out" in call_refused(check_out_folder, busy, study, force=False).message
    check_out_folder(busy, study, force=True)
    assert "holds the study's CSV or images" in call_refused(check_out_folder, tmp_path, study, force=True).message
    assert "holds the study's CSV or images" in call_refused(check_out_folder, tmp_path / "study" / "images", study,
                                                        force=True).message
