"""`cofe data split` and `cofe init --sites-from` driven through the real CLI, torch-free: the split's
folders are what `cofe init` takes, bad input is one error line, and nothing on disk is half-written."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from cli_assertions import ok, refused, run_cofe
from unit_federation import gandlf_config, write_federation
from volumes import write_volume

from cofe_cli.init_pipeline import collaborators_from_folder
from cofe_cli.plan.workspaces import CollaboratorData


def write_study(folder: Path, subjects: int = 9, partitions: int = 3) -> Path:
    """A segmentation study with relative image paths and a Partition_ID column (1..partitions)."""
    rows = []
    for number in range(subjects):
        subject = f"p{number}"
        image = write_volume(folder / "images" / f"{subject}_t1.nii.gz")
        label = write_volume(folder / "images" / f"{subject}_seg.nii.gz")
        rows.append([subject, str(image.relative_to(folder)), str(label.relative_to(folder)), str(number % partitions + 1)])
    path = folder / "all_subjects.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["SubjectID", "Channel_0", "Label", "Partition_ID"])
        writer.writerows(rows)
    return path


def write_config(tmp: Path) -> Path:
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(gandlf_config()))
    return path


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def subjects_in(csv_path: Path) -> set[str]:
    with open(csv_path, newline="") as handle:
        return {row["SubjectID"] for row in csv.DictReader(handle)}


def test_split_then_init_sites_from_takes_one_collaborator_per_site(tmp_path: Path) -> None:
    study = write_study(tmp_path / "study")
    result = ok(run_cofe("data", "split", "--csv", study, "--by", "Partition_ID", "--out", "SITES", cwd=tmp_path))
    for line in ("site1", "site2", "site3", "3 sites in SITES", "--sites-from SITES"):
        assert line in result.stdout, result.stdout
    sites = tmp_path / "SITES"
    assert sorted(p.name for p in sites.iterdir()) == ["site1", "site2", "site3"]
    placed = [subjects_in(sites / site / part) for site in ("site1", "site2", "site3") for part in ("train.csv", "valid.csv")]
    assert sum(map(len, placed)) == 9 and set().union(*placed) == {f"p{n}" for n in range(9)}, "every subject once"
    assert collaborators_from_folder(sites) == [f"site{n}={sites / f'site{n}'}" for n in (1, 2, 3)]

    # `cofe init --sites-from` checks every site's data before torch is imported; a federation already
    # in --dir then stops it (torch-free) where the sites and their data have been accepted.
    fed = write_federation(tmp_path / "fed", config=gandlf_config(), address="localhost",
                           collaborators=[CollaboratorData("hospital_a", None)]).root
    refused(run_cofe("init", "-c", write_config(tmp_path), "--sites-from", sites, "--dir", fed, cwd=tmp_path),
            "already holds a federation")
    (sites / "site2" / "valid.csv").unlink()
    refused(run_cofe("init", "-c", write_config(tmp_path), "--sites-from", sites, "--dir", fed, cwd=tmp_path),
            "site2 has no valid.csv")


def test_split_is_the_same_for_the_same_seed_and_paths_resolve_from_anywhere(tmp_path: Path) -> None:
    study = write_study(tmp_path / "study", subjects=12)
    for out in ("a", "b"):
        ok(run_cofe("data", "split", "--csv", study, "--sites", "3", "--dirichlet", "1.0", "--seed", "5", "--out", out,
                    cwd=tmp_path))
    assert tree(tmp_path / "a") == tree(tmp_path / "b")
    ok(run_cofe("data", "split", "--csv", study, "--sites", "3", "--seed", "6", "--out", "c", cwd=tmp_path))
    assert tree(tmp_path / "a") != tree(tmp_path / "c")
    with open(tmp_path / "a" / "site1" / "train.csv", newline="") as handle:
        assert all(Path(row["Label"]).is_absolute() and Path(row["Label"]).is_file() for row in csv.DictReader(handle))


@pytest.mark.parametrize("args, message", [
    ([], "no way to split the subjects into sites was given"),
    (["--by", "Partition_ID", "--sites", "2"], "--by and --sites are two ways to split: give one"),
    (["--by", "Hospital"], "has no column 'Hospital'"),
    (["--sites", "5"], "has 9 subject(s), too few for 5 sites"),
    (["--sites", "2", "--dirichlet", "0"], "--dirichlet must be greater than 0, got 0.0"),
    (["--dirichlet", "0.5"], "--dirichlet needs --sites N"),
    (["--sites", "2", "--valid-fraction", "1"], "--valid-fraction must be at least 0 and below 1, got 1.0"),
    (["--partition-csv", "unknown.csv"], "lists 1 subject(s) that all_subjects.csv does not: ghost"),
    (["--partition-csv", "missing.csv"], "gives no partition to 1 subject(s) of all_subjects.csv: p8"),
])
def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    study = write_study(tmp_path / "study")
    everyone = "Partition_ID,Subject_ID\n" + "".join(f"{n % 2 + 1},p{n}\n" for n in range(9))
    (tmp_path / "unknown.csv").write_text(everyone + "1,ghost\n")
    (tmp_path / "missing.csv").write_text(everyone.replace("1,p8\n", ""))
    refused(run_cofe("data", "split", "--csv", study, "--out", "SITES", *args, cwd=tmp_path), message)
    assert not (tmp_path / "SITES").exists()


def test_a_non_empty_out_is_kept_unless_forced_and_a_failed_split_leaves_it_whole(tmp_path: Path) -> None:
    study = write_study(tmp_path / "study")
    ok(run_cofe("data", "split", "--csv", study, "--sites", "2", "--out", "SITES", cwd=tmp_path))
    before = tree(tmp_path / "SITES")
    refused(run_cofe("data", "split", "--csv", study, "--sites", "3", "--out", "SITES", cwd=tmp_path), "is not empty")
    refused(run_cofe("data", "split", "--csv", study, "--sites", "30", "--out", "SITES", "--force", cwd=tmp_path), "too few")
    assert tree(tmp_path / "SITES") == before
    ok(run_cofe("data", "split", "--csv", study, "--sites", "3", "--out", "SITES", "--force", cwd=tmp_path))
    assert sorted(p.name for p in (tmp_path / "SITES").iterdir()) == ["site1", "site2", "site3"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no staging folder left behind"
    refused(run_cofe("data", "split", "--csv", study, "--sites", "2", "--out", "study", "--force", cwd=tmp_path),
            "holds the study's CSV or images")


def test_init_sites_from_refuses_what_is_no_set_of_site_folders(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "odd" / "site1").mkdir(parents=True)
    (tmp_path / "odd" / "site1" / "train.csv").write_text("SubjectID,Channel_0,Label\n")
    (tmp_path / "odd" / "notes").mkdir()

    def init(*args):
        return run_cofe("init", "-c", config, "--dir", tmp_path / "fed", *args, cwd=tmp_path)

    refused(init("--sites-from", tmp_path / "empty"), f"--sites-from {tmp_path / 'empty'} has no sub-folders")
    refused(init("--sites-from", tmp_path / "odd"), "sub-folder(s) without train.csv: notes")
    refused(init("--sites-from", config), "is not a folder")
    refused(init("--sites-from", tmp_path / "odd", "--collaborator", "site_a"),
            "--sites-from and --collaborator are two ways to give the sites: give one")
    refused(init(), "no collaborators given")
    assert not (tmp_path / "fed").exists()
