"""A site's GaNDLF CSVs: checks, the by-subject split, the problem type, and collaborator names; no torch."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from cli_assertions import call_refused
from volumes import write_csv, write_volume

from cofe_cli.federation import check_collaborator_name
from cofe_cli.plan.data import check_csv, check_data_folder, problem_type_of, split_csv

SEGMENTATION_HEADER = ["SubjectID", "Channel_0", "Channel_1", "Label"]
REGRESSION_HEADER = ["SubjectID", "Channel_0", "ValueToPredict"]


def touch(path: Path) -> Path:
    return write_volume(path)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def segmentation_rows(folder: Path, subjects: list[str], *, relative: bool = False) -> list[list[str]]:
    rows = []
    for subject in subjects:
        files = [touch(folder / "images" / subject / name) for name in ("t1.nii.gz", "t2.nii.gz", "seg.nii.gz")]
        rows.append([subject, *(str(f.relative_to(folder)) if relative else str(f) for f in files)])
    return rows


def regression_rows(folder: Path, subjects: list[str]) -> list[list[str]]:
    return [[subject, str(touch(folder / "images" / f"{subject}.nii.gz")), str(i * 1.5)] for i, subject in enumerate(subjects)]


@pytest.fixture
def segmentation_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "site"
    write_csv(folder / "train.csv", SEGMENTATION_HEADER, segmentation_rows(folder, ["s1", "s2", "s3"]))
    write_csv(folder / "valid.csv", SEGMENTATION_HEADER, segmentation_rows(folder, ["s4", "s5"]))
    return folder


# ---------------------------------------------------------------- check_data_folder


def test_good_segmentation_folder_passes_with_counts(segmentation_folder: Path) -> None:
    summary = check_data_folder(segmentation_folder, problem_type="segmentation", channels=2)
    assert (summary.train_subjects, summary.valid_subjects, summary.channels) == (3, 2, 2)
    assert summary.folder == segmentation_folder.resolve()


def test_good_regression_folder_passes(tmp_path: Path) -> None:
    folder = tmp_path / "site"
    write_csv(folder / "train.csv", REGRESSION_HEADER, regression_rows(folder, ["a", "b"]))
    write_csv(folder / "valid.csv", REGRESSION_HEADER, regression_rows(folder, ["c"]))
    summary = check_data_folder(folder, problem_type="regression", channels=1)
    assert (summary.train_subjects, summary.valid_subjects, summary.channels) == (2, 1, 1)
    assert check_data_folder(folder, problem_type="classification").valid_subjects == 1


def test_relative_paths_are_read_from_the_csv_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "site"
    for name, subjects in (("train.csv", ["s1", "s2"]), ("valid.csv", ["s3"])):
        write_csv(folder / name, SEGMENTATION_HEADER, segmentation_rows(folder, subjects, relative=True))
    monkeypatch.chdir(tmp_path)  # not the CSV's folder: a cwd-relative reading would fail
    assert check_data_folder(folder, problem_type="segmentation", channels=2).train_subjects == 2


def test_missing_folder(tmp_path: Path) -> None:
    error = call_refused(check_data_folder, tmp_path / "nowhere", problem_type="segmentation")
    assert "data folder does not exist" in error.message and "nowhere" in error.message


@pytest.mark.parametrize("absent", ["train.csv", "valid.csv"])
def test_missing_csv(segmentation_folder: Path, absent: str) -> None:
    (segmentation_folder / absent).unlink()
    error = call_refused(check_data_folder, segmentation_folder, problem_type="segmentation")
    assert f"has no {absent}" in error.message


@pytest.mark.parametrize(
    ("problem_type", "header", "missing"),
    [
        ("segmentation", ["SubjectID", "Channel_0", "Channel_1"], "Label"),
        ("regression", ["SubjectID", "Channel_0"], "ValueToPredict"),
        ("classification", ["SubjectID", "Channel_0", "Label"], "ValueToPredict"),
        ("segmentation", ["Channel_0", "Channel_1", "Label"], "SubjectID"),
        ("segmentation", ["SubjectID", "Label"], "Channel_0"),
    ],
    ids=["segmentation-no-label", "regression-no-value", "classification-no-value", "no-subject", "no-channel"],
)
def test_missing_column(segmentation_folder: Path, problem_type: str, header: list[str], missing: str) -> None:
    write_csv(segmentation_folder / "train.csv", header, [["x"] * len(header)])
    error = call_refused(check_data_folder, segmentation_folder, problem_type=problem_type)
    assert "train.csv lacks column(s)" in error.message and missing in error.message
    assert missing in error.hint


def test_channel_count_must_match_the_model(segmentation_folder: Path) -> None:
    error = call_refused(check_data_folder, segmentation_folder, problem_type="segmentation", channels=1)
    assert "2 image channel column(s) but the model expects 1" in error.message


@pytest.mark.parametrize("content", ["", "SubjectID,Channel_0,Channel_1,Label\n"], ids=["empty-file", "header-only"])
def test_empty_csv(segmentation_folder: Path, content: str) -> None:
    (segmentation_folder / "valid.csv").write_text(content)
    error = call_refused(check_data_folder, segmentation_folder, problem_type="segmentation", channels=2)
    assert "valid.csv" in error.message


def test_header_only_csv_says_it_lists_no_subjects(segmentation_folder: Path) -> None:
    write_csv(segmentation_folder / "valid.csv", SEGMENTATION_HEADER, [])
    assert "lists no subjects" in call_refused(check_data_folder, segmentation_folder, problem_type="segmentation").message


def test_a_listed_file_that_does_not_exist_names_the_line(segmentation_folder: Path) -> None:
    rows = segmentation_rows(segmentation_folder, ["s1", "s2"])
    rows[1][2] = str(segmentation_folder / "images" / "s2" / "gone.nii.gz")
    write_csv(segmentation_folder / "train.csv", SEGMENTATION_HEADER, rows)
    error = call_refused(check_data_folder, segmentation_folder, problem_type="segmentation", channels=2)
    # Line 1 is the header, so the second subject is line 3.
    assert f"{segmentation_folder / 'train.csv'}:3: Channel_1 file does not exist" in error.message
    assert "gone.nii.gz" in error.message


def test_a_missing_label_file_is_found_too(segmentation_folder: Path) -> None:
    (segmentation_folder / "images" / "s4" / "seg.nii.gz").unlink()
    error = call_refused(check_data_folder, segmentation_folder, problem_type="segmentation", channels=2)
    assert "valid.csv:2: Label file does not exist" in error.message


def test_an_empty_cell_is_refused(segmentation_folder: Path) -> None:
    rows = segmentation_rows(segmentation_folder, ["s1"])
    rows[0][1] = ""
    write_csv(segmentation_folder / "train.csv", SEGMENTATION_HEADER, rows)
    assert "train.csv:2: column Channel_0 is empty" in call_refused(
        check_data_folder, segmentation_folder, problem_type="segmentation").message


def test_a_csv_that_is_not_utf8_names_the_file_and_line(segmentation_folder: Path) -> None:
    """It used to end in a UnicodeDecodeError traceback."""
    csv_path = segmentation_folder / "train.csv"
    csv_path.write_bytes(csv_path.read_bytes() + "s9,caf\xe9.nii.gz,b.nii.gz,c.nii.gz\n".encode("latin-1"))
    error = call_refused(check_data_folder, segmentation_folder, problem_type="segmentation", channels=2)
    assert error.message.startswith(f"{csv_path}:5: not UTF-8 text (byte 0xe9 at offset ")
    assert "UTF-8" in error.hint


@pytest.mark.parametrize("content", [b"plain text, not an image\n", b"", b"\x1f\x8b\x08\x00garbage"],
                         ids=["text", "empty", "broken-gzip"])
def test_a_listed_file_that_is_no_image_is_refused(segmentation_folder: Path, content: bytes) -> None:
    (segmentation_folder / "images" / "s4" / "t2.nii.gz").write_bytes(content)
    error = call_refused(check_data_folder, segmentation_folder, problem_type="segmentation", channels=2)
    assert error.message == (f"{segmentation_folder / 'valid.csv'}:2: Channel_1 is not an image file that can be read: "
                             f"{segmentation_folder / 'images' / 's4' / 't2.nii.gz'}")


def test_a_system_file_listed_as_image_is_refused(segmentation_folder: Path) -> None:
    write_csv(segmentation_folder / "valid.csv", SEGMENTATION_HEADER,
              [["s4", "/etc/passwd", str(touch(segmentation_folder / "t2.nii.gz")), str(touch(segmentation_folder / "l.nii.gz"))]])
    assert "Channel_0 is not an image file that can be read: /etc/passwd" in call_refused(
        check_data_folder, segmentation_folder, problem_type="segmentation").message


def test_a_label_of_another_size_than_its_image_is_refused(segmentation_folder: Path) -> None:
    write_volume(segmentation_folder / "images" / "s2" / "seg.nii.gz", (16, 16, 15))
    error = call_refused(check_data_folder, segmentation_folder, problem_type="segmentation", channels=2)
    assert error.message == (f"{segmentation_folder / 'train.csv'}:3: Label is 16x16x15 voxels but Channel_0 is "
                             "16x16x16 (subject s2)")


def test_the_summary_has_the_smallest_volume(segmentation_folder: Path) -> None:
    for name in ("t1", "t2", "seg"):
        write_volume(segmentation_folder / "images" / "s5" / f"{name}.nii.gz", (20, 12, 18))
    assert check_data_folder(segmentation_folder, problem_type="segmentation").smallest_volume == (16, 12, 16)


def test_a_patch_larger_than_volumes_is_refused_without_padding(segmentation_folder: Path) -> None:
    error = call_refused(check_data_folder, segmentation_folder, problem_type="segmentation", patch_size=(32, 16, 8))
    assert error.message == (f"patch_size [32, 16, 8] is larger than 5 of the 5 volume(s) in {segmentation_folder} "
                             "(down to 16x16x16 voxels): GaNDLF's patch sampler fails on them")
    assert "at most [16, 16, 8]" in error.hint and "enable_padding: true" in error.hint


def test_a_patch_larger_than_volumes_is_a_note_with_padding(segmentation_folder: Path) -> None:
    summary = check_data_folder(segmentation_folder, problem_type="segmentation", patch_size=(32, 32, 32), padding=True)
    assert summary.notes == (f"patch_size [32, 32, 32] is larger than 5 of the 5 volume(s) in {segmentation_folder} "
                             "(down to 16x16x16 voxels); GaNDLF pads them (enable_padding), so those patches are mostly padding",)
    assert check_data_folder(segmentation_folder, problem_type="segmentation", patch_size=(16, 16, 16)).notes == ()


def test_a_2d_patch_is_compared_with_2d_images(tmp_path: Path) -> None:
    folder = tmp_path / "site"
    rows = [[s, str(write_volume(folder / f"{s}.nii.gz", (64, 48))), str(write_volume(folder / f"{s}_l.nii.gz", (64, 48)))]
            for s in ("a", "b")]
    write_csv(folder / "train.csv", ["SubjectID", "Channel_0", "Label"], rows[:1])
    write_csv(folder / "valid.csv", ["SubjectID", "Channel_0", "Label"], rows[1:])
    assert check_data_folder(folder, problem_type="segmentation", patch_size=(48, 48, 1)).smallest_volume == (64, 48)
    assert "at most [64, 48, 1]" in call_refused(check_data_folder, folder, problem_type="segmentation", patch_size=(64, 64, 1)).hint


def test_a_split_csv_checks_the_patch_before_writing(one_csv: Path, tmp_path: Path) -> None:
    call_refused(split_csv, one_csv, tmp_path / "out", problem_type="segmentation", patch_size=(64, 64, 64))
    assert not (tmp_path / "out").exists()


def test_a_row_with_too_many_fields_is_a_cofe_error(segmentation_folder: Path) -> None:
    rows = segmentation_rows(segmentation_folder, ["s1"])
    write_csv(segmentation_folder / "train.csv", SEGMENTATION_HEADER, [rows[0] + ["extra"]])
    call_refused(check_data_folder, segmentation_folder, problem_type="segmentation", channels=2)


# ---------------------------------------------------------------- split_csv

SUBJECTS = [f"subject_{i:02d}" for i in range(10)]


@pytest.fixture
def one_csv(tmp_path: Path) -> Path:
    """Two rows (time points) per subject, relative paths, in a folder that is not the cwd."""
    folder = tmp_path / "raw"
    rows = segmentation_rows(folder, SUBJECTS, relative=True)
    rows += [[subject, *row[1:]] for subject, row in zip(SUBJECTS, rows)]
    return write_csv(folder / "all.csv", SEGMENTATION_HEADER, rows)


def subjects_in(path: Path) -> set[str]:
    return {row["SubjectID"] for row in read_csv(path)}


def test_split_is_by_subject_with_absolute_paths(one_csv: Path, tmp_path: Path) -> None:
    summary = split_csv(one_csv, tmp_path / "out", problem_type="segmentation", channels=2, valid_fraction=0.3)
    train, valid = subjects_in(tmp_path / "out" / "train.csv"), subjects_in(tmp_path / "out" / "valid.csv")
    assert not train & valid, "no subject may be in both"
    assert train | valid == set(SUBJECTS)
    assert (summary.train_subjects, summary.valid_subjects) == (7, 3) == (len(train), len(valid))
    assert len(read_csv(tmp_path / "out" / "train.csv")) == 14, "every row of a subject goes with it"
    for name in ("train.csv", "valid.csv"):
        for row in read_csv(tmp_path / "out" / name):
            for column in ("Channel_0", "Channel_1", "Label"):
                assert Path(row[column]).is_absolute() and Path(row[column]).is_file()
    # What the split wrote passes the folder check.
    assert check_data_folder(tmp_path / "out", problem_type="segmentation", channels=2).valid_subjects == 6


def test_split_is_deterministic_and_independent_of_row_order(one_csv: Path, tmp_path: Path) -> None:
    split_csv(one_csv, tmp_path / "a", problem_type="segmentation")
    split_csv(one_csv, tmp_path / "b", problem_type="segmentation")
    for name in ("train.csv", "valid.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()

    with open(one_csv, newline="") as handle:
        header, *rows = list(csv.reader(handle))
    reversed_csv = write_csv(one_csv.with_name("reversed.csv"), header, rows[::-1])
    split_csv(reversed_csv, tmp_path / "c", problem_type="segmentation")
    assert subjects_in(tmp_path / "c" / "valid.csv") == subjects_in(tmp_path / "a" / "valid.csv")
    assert subjects_in(tmp_path / "c" / "train.csv") == subjects_in(tmp_path / "a" / "train.csv")


def test_split_keeps_at_least_one_subject_on_each_side(tmp_path: Path) -> None:
    folder = tmp_path / "raw"
    path = write_csv(folder / "two.csv", SEGMENTATION_HEADER, segmentation_rows(folder, ["a", "b"]))
    for fraction in (0.01, 0.99):
        summary = split_csv(path, tmp_path / f"out{fraction}", problem_type="segmentation", valid_fraction=fraction)
        assert (summary.train_subjects, summary.valid_subjects) == (1, 1)


def test_split_refuses_fewer_than_two_subjects(tmp_path: Path) -> None:
    folder = tmp_path / "raw"
    rows = segmentation_rows(folder, ["only"]) * 3
    path = write_csv(folder / "one.csv", SEGMENTATION_HEADER, rows)
    error = call_refused(split_csv, path, tmp_path / "out", problem_type="segmentation")
    assert "1 subject(s)" in error.message and "at least 2" in error.message
    assert not (tmp_path / "out").exists()


def test_split_checks_the_csv_first(tmp_path: Path) -> None:
    folder = tmp_path / "raw"
    path = write_csv(folder / "bad.csv", ["SubjectID", "Channel_0"], [["a", "x"], ["b", "y"]])
    assert "lacks column(s) Label" in call_refused(split_csv, path, tmp_path / "out", problem_type="segmentation").message
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- problem type


def _config(final_layer, metrics) -> dict:
    return {"model": {"final_layer": final_layer}, "metrics": metrics}


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (_config("sigmoid", ["dice"]), "segmentation"),
        (_config("softmax", {"dice": None, "hd95": {"connectivity": 1}}), "segmentation"),
        (_config("softmax", ["accuracy", "f1"]), None),  # GaNDLF decides from the CSV's columns
        (_config("logits", ["dice"]), "classification"),
        (_config("none", ["mse"]), "regression"),
        (_config("None", ["mse"]), "regression"),
        (_config(None, ["mse"]), "regression"),
        (_config("regression", ["mse"]), "regression"),
    ],
    ids=["sigmoid-dice", "softmax-dict-metrics", "softmax-accuracy", "logits", "none", "None", "null", "regression"],
)
def test_problem_type_of(config: dict, expected: str | None) -> None:
    assert problem_type_of(config) == expected


def test_undecided_problem_type_takes_label_or_value_from_the_csv(tmp_path: Path) -> None:
    touch(tmp_path / "img.nii.gz")
    touch(tmp_path / "lab.nii.gz")
    labelled = write_csv(tmp_path / "seg.csv", ["SubjectID", "Channel_0", "Label"], [["a", "img.nii.gz", "lab.nii.gz"]])
    valued = write_csv(tmp_path / "cls.csv", ["SubjectID", "Channel_0", "ValueToPredict"], [["a", "img.nii.gz", "1"]])
    neither = write_csv(tmp_path / "none.csv", ["SubjectID", "Channel_0"], [["a", "img.nii.gz"]])
    assert check_csv(labelled, problem_type=None)[0].label == "Label"
    assert check_csv(valued, problem_type=None)[0].values == ("ValueToPredict",)
    assert "neither a Label nor a ValueToPredict" in call_refused(check_csv, neither, problem_type=None).message


# GaNDLF 0.1.5's segmentation metric names (GANDLF/utils/parameter_processing.py: the dice names plus
# GANDLF/metrics/__init__.py surface_distance_ids), copied here so the test needs no GaNDLF.
GANDLF_SEGMENTATION_METRICS = [
    "dice", "dice_score", "dc", "dice_coefficient", "hd95", "hd100", "nsd", "normalized_surface_dice",
    "hd95_per_label", "hausdorff95_per_label", "hausdorff95", "hd100_per_label", "hausdorff", "hausdorff100",
    "nsd_per_label", "normalized_surface_dice_per_label", "normalized_sd", "normalized_sd_per_label",
]


@pytest.mark.parametrize("metric", GANDLF_SEGMENTATION_METRICS)
def test_every_gandlf_segmentation_metric_means_segmentation(metric: str) -> None:
    assert problem_type_of(_config("sigmoid", [metric.upper()])) == "segmentation"
    assert problem_type_of(_config("softmax", ["f1", metric])) == "segmentation"


# ---------------------------------------------------------------- collaborator names


@pytest.mark.parametrize("name", ["hospital_a", "site-2", "a", "0site", "x" * 63],
                         ids=["hospital_a", "site-2", "a", "0site", "63-chars"])
def test_good_collaborator_names(name: str) -> None:
    assert check_collaborator_name(name) == name


@pytest.mark.parametrize(
    ("name", "in_message"),
    [
        ("", "empty"),
        ("aggregator", "reserved"),
        ("Hospital_A", "not a safe name"),
        ("a/b", "not a safe name"),
        ("../x", "not a safe name"),
        ("_site", "not a safe name"),
        ("site a", "not a safe name"),
        ("x" * 64, "not a safe name"),
    ],
    ids=["empty", "aggregator", "uppercase", "slash", "dotdot", "leading-underscore", "space", "64-chars"],
)
def test_bad_collaborator_names(name: str, in_message: str) -> None:
    assert in_message in call_refused(check_collaborator_name, name).message


def test_uppercase_name_hint_suggests_the_lowercase_name() -> None:
    assert "'hospital_a'" in call_refused(check_collaborator_name, "Hospital_A").hint


@pytest.mark.parametrize("name", ["Aggregator", "x" * 64, "y" * 80], ids=["Aggregator", "64-chars", "80-chars"])
def test_suggested_name_is_itself_accepted(name: str) -> None:
    hint = call_refused(check_collaborator_name, name).hint
    suggestion = hint.rsplit("e.g. ", 1)[1].strip("'")
    assert check_collaborator_name(suggestion) == suggestion
