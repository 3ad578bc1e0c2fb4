"""`cofe data split`: one GaNDLF CSV of a whole study becomes one data folder per simulated site.

Every site's folder holds GaNDLF's train.csv and valid.csv, with absolute image paths (so the folders
work wherever they are moved or read from), and `cofe init --sites-from` takes one collaborator per
folder. A subject (the CSV's subject ID; all its rows together) is in exactly one site, and in that
site's train.csv or its valid.csv, never both. The split depends on the subject IDs, the mode and the
seed only, never on the CSV's row order. No torch: SimpleITK reads the label masks.
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from cofe_cli.errors import CofeError
from cofe_cli.federation import AGGREGATOR, check_collaborator_name
from cofe_cli.fsutil import atomic_write_text, staged_dir, writing_into
from cofe_cli.plan.data import (TRAIN_CSV, VALID_CSV, CsvColumns, _read_csv, _render_absolute, _resolve, check_csv,
                                pick_valid_subjects)

# FeTS's partitioning CSVs (partitioning_1.csv, partitioning_2.csv): one row per subject.
PARTITION_ID = "Partition_ID"
PARTITION_SUBJECT = "Subject_ID"
# A site trains on one subject and validates on another at the least: GaNDLF refuses an empty CSV.
MIN_SUBJECTS_PER_SITE = 2
# Dirichlet draws that leave a site with too few subjects are drawn again, this many times at most.
DIRICHLET_DRAWS = 1000
LESION, NO_LESION = "lesion", "no lesion"
# More distinct values than this (a regression target, most likely) are counted, not listed, in the summary.
LISTED_CLASSES = 10
MODES_HINT = "give one of --by COLUMN, --partition-csv FILE, --sites N (IID) or --sites N --dirichlet ALPHA"


@dataclass(frozen=True)
class SplitMode:
    """How subjects are assigned to sites: exactly one of the four ways."""

    by: str | None = None
    partition_csv: Path | None = None
    sites: int | None = None
    dirichlet: float | None = None


@dataclass(frozen=True)
class Study:
    """The whole study's CSV, read and checked like a site's (every listed file an image)."""

    csv: Path
    columns: CsvColumns
    problem_type: str  # "segmentation" (Label masks) or "classification" (ValueToPredict)
    rows_of: dict[str, list[dict[str, str]]]  # subject -> its rows, in the CSV's order
    label_of: dict[str, str]  # subject -> its class, or LESION / NO_LESION for segmentation


@dataclass(frozen=True)
class Site:
    name: str
    train: tuple[str, ...]
    valid: tuple[str, ...]


def check_split_options(mode: SplitMode, *, valid_fraction: float, seed: int) -> None:
    """Everything that needs no file, checked before the CSV is read."""
    if mode.dirichlet is not None and mode.sites is None:
        raise CofeError("--dirichlet needs --sites N: the number of sites to skew the labels over",
                        hint="e.g. --sites 8 --dirichlet 0.5")
    given = [name for name, value in (("--by", mode.by), ("--partition-csv", mode.partition_csv), ("--sites", mode.sites))
             if value is not None]
    if not given:
        raise CofeError("no way to split the subjects into sites was given", hint=MODES_HINT)
    if len(given) > 1:
        raise CofeError(f"{' and '.join(given)} are two ways to split: give one", hint=MODES_HINT)
    if mode.by is not None and not mode.by.strip():
        raise CofeError("--by names no column", hint="give the CSV's column that names each subject's site, e.g. --by Partition_ID")
    if mode.sites is not None and not 1 <= mode.sites <= 10000:
        raise CofeError(f"--sites must be between 1 and 10000, got {mode.sites}", hint="e.g. --sites 8")
    if mode.dirichlet is not None and not mode.dirichlet > 0:  # `not >` also refuses nan
        raise CofeError(f"--dirichlet must be greater than 0, got {mode.dirichlet}",
                        hint="the concentration: small (0.1) skews the labels strongly, large (100) is close to IID")
    if not 0 <= valid_fraction < 1:
        raise CofeError(f"--valid-fraction must be at least 0 and below 1, got {valid_fraction}",
                        hint="e.g. --valid-fraction 0.2 (every site of 2 or more subjects validates on at least one)")
    if not 0 <= seed < 2**32:
        raise CofeError(f"--seed must be between 0 and {2**32 - 1}, got {seed}", hint="e.g. --seed 0")


def has_lesion(mask: Path) -> bool:
    """Whether a label mask has any non-zero voxel (reads the whole volume)."""
    import SimpleITK as sitk  # here, not at the top: it costs ~0.3 s that `cofe --help` must not pay

    extremes = sitk.MinimumMaximumImageFilter()
    extremes.Execute(sitk.ReadImage(str(mask)))
    return extremes.GetMaximum() != 0 or extremes.GetMinimum() != 0


def read_study(csv_path: Path) -> Study:
    csv_path = Path(csv_path).expanduser().resolve()
    columns, rows, _ = check_csv(csv_path, problem_type=None)
    problem_type = "segmentation" if columns.label and not columns.values else "classification"
    rows_of: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        rows_of[row[columns.subject]].append(row)
    if problem_type == "segmentation":
        label_of = {subject: LESION if any(has_lesion(_resolve(row[columns.label], csv_path.parent)) for row in subject_rows)
                    else NO_LESION for subject, subject_rows in rows_of.items()}
    else:  # a subject's class: its first row's value (the rows of one subject are one case)
        label_of = {subject: subject_rows[0][columns.values[0]] for subject, subject_rows in rows_of.items()}
    return Study(csv_path, columns, problem_type, dict(rows_of), label_of)


def site_name(value: str) -> str:
    """A collaborator name for a partition's value: `1` -> `site1`, `Hospital A` -> `hospital_a`."""
    value = value.strip()
    name = f"site{value}" if value.isdigit() else re.sub(r"[^a-z0-9_-]+", "_", value.lower()).strip("_-")[:63]
    if name == AGGREGATOR:
        name = f"site_{name}"
    return check_collaborator_name(name)


def _named_groups(partition_of: dict[str, str], option: str) -> dict[str, list[str]]:
    """Subjects by their partition's site name; two partition values may not come to one name."""
    groups: dict[str, list[str]] = defaultdict(list)
    value_of: dict[str, str] = {}
    for subject, value in partition_of.items():
        name = site_name(value)
        if value_of.setdefault(name, value) != value:
            raise CofeError(f"{option}: partitions {value_of[name]!r} and {value!r} would both be site {name!r}",
                            hint="give the partitions values that differ in more than case and punctuation")
        groups[name].append(subject)
    return dict(groups)


def _groups_by_column(study: Study, column: str) -> dict[str, list[str]]:
    header = list(next(iter(study.rows_of.values()))[0])
    if column not in header:
        raise CofeError(f"{study.csv} has no column {column!r} (header: {','.join(header)})",
                        hint="--by takes the name of the CSV's column that names each subject's site, e.g. Partition_ID")
    partition_of = {}
    for subject, rows in study.rows_of.items():
        values = {row[column] for row in rows}
        if "" in values:
            raise CofeError(f"{study.csv}: subject {subject} has an empty {column}", hint=f"give every row its {column}")
        if len(values) > 1:
            raise CofeError(f"{study.csv}: subject {subject} is in {len(values)} partitions ({', '.join(sorted(values))})",
                            hint="a subject's rows must all name one partition: a subject is never in two sites")
        partition_of[subject] = values.pop()
    return _named_groups(partition_of, "--by")


def _find_column(header: list[str], wanted: str) -> str | None:
    return next((column for column in header if column.lower() == wanted.lower()), None)


def _listed(subjects: set[str], shown: int = 5) -> str:
    names = sorted(subjects)
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _groups_by_partition_csv(study: Study, partition_csv: Path) -> dict[str, list[str]]:
    partition_csv = Path(partition_csv).expanduser()
    header, rows = _read_csv(partition_csv)
    partition_column, subject_column = _find_column(header, PARTITION_ID), _find_column(header, PARTITION_SUBJECT)
    if partition_column is None or subject_column is None:
        raise CofeError(f"{partition_csv} lacks column(s) "
                        f"{', '.join(c for c, found in ((PARTITION_ID, partition_column), (PARTITION_SUBJECT, subject_column)) if not found)}"
                        f" (header: {','.join(header) or 'empty'})",
                        hint=f"a partitioning CSV as FeTS's has the columns {PARTITION_ID},{PARTITION_SUBJECT}, one row per subject")
    partition_of: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        subject, partition = row[subject_column], row[partition_column]
        if not subject or not partition:
            raise CofeError(f"{partition_csv}:{line}: empty {PARTITION_SUBJECT if not subject else PARTITION_ID}",
                            hint=f"every row needs a {PARTITION_ID} and a {PARTITION_SUBJECT}")
        if partition_of.setdefault(subject, partition) != partition:
            raise CofeError(f"{partition_csv}:{line}: subject {subject} is in partitions {partition_of[subject]} and {partition}",
                            hint="a subject is never in two sites: give each subject one partition")
    unknown = set(partition_of) - set(study.rows_of)
    if unknown:
        raise CofeError(f"{partition_csv} lists {len(unknown)} subject(s) that {study.csv.name} does not: {_listed(unknown)}",
                        hint=f"the partitioning CSV's {PARTITION_SUBJECT} must match the data CSV's {study.columns.subject}")
    missing = set(study.rows_of) - set(partition_of)
    if missing:
        raise CofeError(f"{partition_csv} gives no partition to {len(missing)} subject(s) of {study.csv.name}: {_listed(missing)}",
                        hint="add a row for every subject to the partitioning CSV, or remove those subjects from the data CSV")
    return _named_groups(partition_of, "--partition-csv")


def _numbered(groups: list[list[str]]) -> dict[str, list[str]]:
    return {f"site{number}": group for number, group in enumerate(groups, start=1)}


def _iid_groups(subjects: list[str], sites: int, rng: random.Random) -> dict[str, list[str]]:
    rng.shuffle(subjects)
    return _numbered([subjects[number::sites] for number in range(sites)])


def _dirichlet_groups(study: Study, subjects: list[str], sites: int, alpha: float, rng: random.Random) -> dict[str, list[str]]:
    """Each class's subjects are shared out by proportions drawn from Dirichlet(alpha, ..., alpha), per class."""
    by_class: dict[str, list[str]] = defaultdict(list)
    for subject in subjects:
        by_class[study.label_of[subject]].append(subject)
    for _ in range(DIRICHLET_DRAWS):
        groups: list[list[str]] = [[] for _ in range(sites)]
        for label in sorted(by_class):
            members = list(by_class[label])
            rng.shuffle(members)
            # Gamma draws normalised are a Dirichlet draw; a tiny alpha can make them all 0.0 (underflow).
            weights = [rng.gammavariate(alpha, 1.0) for _ in range(sites)]
            if not sum(weights):
                weights[rng.randrange(sites)] = 1.0
            start, cumulative = 0, 0.0
            for number, weight in enumerate(weights):
                cumulative += weight
                end = round(len(members) * cumulative / sum(weights))
                groups[number] += members[start:end]
                start = end
        if min(len(group) for group in groups) >= MIN_SUBJECTS_PER_SITE:
            return _numbered(groups)
    raise CofeError(f"no Dirichlet({alpha}) draw in {DIRICHLET_DRAWS} gave each of the {sites} sites "
                    f"{MIN_SUBJECTS_PER_SITE} subjects ({len(subjects)} subjects in all)",
                    hint="raise --dirichlet (less skew), lower --sites, or try another --seed")


def split_study(study: Study, mode: SplitMode, *, valid_fraction: float, seed: int) -> list[Site]:
    """Sites in name order, each subject in one of them, in its train or its valid part."""
    subjects = sorted(study.rows_of)
    rng = random.Random(seed)
    if mode.by is not None:
        groups = _groups_by_column(study, mode.by)
    elif mode.partition_csv is not None:
        groups = _groups_by_partition_csv(study, mode.partition_csv)
    else:
        if len(subjects) < mode.sites * MIN_SUBJECTS_PER_SITE:
            raise CofeError(f"{study.csv.name} has {len(subjects)} subject(s), too few for {mode.sites} sites "
                            f"of {MIN_SUBJECTS_PER_SITE} subjects (one to train, one to validate)",
                            hint=f"give at most --sites {max(1, len(subjects) // MIN_SUBJECTS_PER_SITE)}")
        groups = (_iid_groups(subjects, mode.sites, rng) if mode.dirichlet is None
                  else _dirichlet_groups(study, subjects, mode.sites, mode.dirichlet, rng))
    small = {name: len(group) for name, group in groups.items() if len(group) < MIN_SUBJECTS_PER_SITE}
    if small:
        raise CofeError(f"{len(small)} site(s) would have fewer than {MIN_SUBJECTS_PER_SITE} subjects, so no subject "
                        f"to validate on: {', '.join(f'{name} ({count})' for name, count in sorted(small.items()))}",
                        hint="merge those partitions into others, or drop their subjects from the CSV")
    sites = []
    for name in sorted(groups, key=_natural):
        valid = pick_valid_subjects(groups[name], valid_fraction=valid_fraction, seed=seed)
        sites.append(Site(name, tuple(sorted(set(groups[name]) - valid)), tuple(sorted(valid))))
    return sites


def _natural(name: str) -> tuple:
    """site2 before site10."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def check_out_folder(out: Path, study: Study, *, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise CofeError(f"--out {out} is a file", hint="give a folder for the sites' data folders")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise CofeError(f"--out {out} is not empty", hint="give a new or empty folder, or pass --force to replace it")
    resolved = out.resolve()
    inside = [study.csv] + [_resolve(row[column], study.csv.parent).resolve()
                            for rows in study.rows_of.values() for row in rows
                            for column in (*study.columns.channels, study.columns.label) if column]
    if any(path == resolved or resolved in path.parents for path in inside):
        raise CofeError(f"--out {out} holds the study's CSV or images, which replacing it would delete",
                        hint="give a folder outside the data, e.g. a new folder beside it")


def write_sites(study: Study, sites: list[Site], out: Path) -> None:
    """All sites' folders at once: built beside --out, then swapped in, so a failure leaves --out as it was."""
    out = Path(out).expanduser()
    with writing_into(out.parent, "--out"), staged_dir(out) as built:
        for site in sites:
            for name, subjects in ((TRAIN_CSV, site.train), (VALID_CSV, site.valid)):
                rows = [row for subject in subjects for row in study.rows_of[subject]]
                atomic_write_text(built / site.name / name, _render_absolute(rows, study.columns, study.csv))


def label_balance(study: Study, subjects: tuple[str, ...]) -> str:
    counts = Counter(study.label_of[subject] for subject in subjects)
    if study.problem_type == "segmentation":
        return f"{counts[LESION]}/{len(subjects)}"
    if len(counts) > LISTED_CLASSES:
        return f"{len(counts)} distinct values"
    return ", ".join(f"{label}: {counts[label]}" for label in sorted(counts, key=_natural))
