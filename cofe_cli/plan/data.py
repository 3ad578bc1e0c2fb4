"""A site's GaNDLF data CSVs: checked before any process starts, split when given as one file.

GaNDLF finds columns by case-insensitive substring (see GANDLF/utils/write_parse.py), and
OpenFL's GaNDLF loader reads exactly `<data>/train.csv` and `<data>/valid.csv`. Every listed file's
image header is read (SimpleITK, as GaNDLF's own subject check does; no pixel data), so a file that
is no image, a subject whose image and label differ in size, and a patch larger than the volumes
are refused here, not in the middle of a federated round.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

from cofe_cli.errors import CofeError
from cofe_cli.fsutil import atomic_write_text

TRAIN_CSV = "train.csv"
VALID_CSV = "valid.csv"

_CHANNEL_MARKERS = ("channel", "modality", "image")
_SUBJECT_MARKERS = ("subject", "patient", "pid")
_LABEL_MARKERS = ("label", "mask", "segmentation", "ground_truth", "groundtruth")
_VALUE_MARKER = "valuetopredict"


@dataclass(frozen=True)
class CsvColumns:
    subject: str
    channels: tuple[str, ...]
    label: str | None
    values: tuple[str, ...]


@dataclass(frozen=True)
class DataSummary:
    folder: Path
    train_subjects: int
    valid_subjects: int
    channels: int
    smallest_volume: tuple[int, ...] = ()  # per axis, over every listed image (voxels)
    notes: tuple[str, ...] = ()  # what the user should know although nothing is wrong


class CheckedCsv(NamedTuple):
    columns: CsvColumns
    rows: list[dict[str, str]]
    volume_sizes: list[tuple[int, ...]]  # one per row: the voxel grid its images share


def classify_columns(header: list[str]) -> CsvColumns:
    """Mirror GaNDLF's header matching, so a CSV that passes here also parses there."""
    subject, label = None, None
    channels, values = [], []
    for column in header:
        lower = column.lower()
        if any(marker in lower for marker in _CHANNEL_MARKERS):
            channels.append(column)
        elif _VALUE_MARKER in lower:
            values.append(column)
        elif any(marker in lower for marker in _SUBJECT_MARKERS):
            subject = column
        elif any(marker in lower for marker in _LABEL_MARKERS) and label is None:
            label = column
    return CsvColumns(subject, tuple(channels), label, tuple(values))


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise CofeError(f"cannot read {path}: {exc.strerror}", hint="check the path and its permissions") from None
    except UnicodeDecodeError as exc:
        line = exc.object[:exc.start].count(b"\n") + 1
        raise CofeError(f"{path}:{line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})",
                        hint="save the CSV as UTF-8, e.g. `iconv -f latin1 -t utf-8 OLD.csv > NEW.csv`") from None
    reader = csv.DictReader(io.StringIO(text))
    header = [name.strip() for name in (reader.fieldnames or [])]
    rows = []
    for row in reader:
        if None in row:  # DictReader files surplus fields under the key None
            raise CofeError(f"{path}:{reader.line_num}: row has more fields than the header ({len(header)})",
                            hint="quote values that contain commas, or fix the header")
        rows.append({k.strip(): (v or "").strip() for k, v in row.items()})
    return header, rows


def _resolve(value: str, csv_folder: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (csv_folder / path)


def read_image_size(path: Path) -> tuple[int, ...] | None:
    """The voxel grid (x, y[, z]) from an image file's header alone; None when it is no image SimpleITK reads."""
    import SimpleITK as sitk  # here, not at the top: it costs ~0.3 s that `cofe --help` must not pay

    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK's multi-line warnings; the refusal says it
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return tuple(int(n) for n in reader.GetSize())


def _voxels(size: Sequence[int]) -> str:
    return "x".join(str(n) for n in size)


def _check_images(path: Path, line: int, row: dict[str, str], file_columns: list[str], subject: str) -> tuple[int, ...]:
    """Every file of one subject is an image, and they share one voxel grid (GaNDLF trains on them voxel by voxel)."""
    first, first_size = None, None
    for column in file_columns:
        size = read_image_size(_resolve(row[column], path.parent))
        if size is None:
            raise CofeError(f"{path}:{line}: {column} is not an image file that can be read: {row[column]}",
                            hint="list medical images GaNDLF reads (NIfTI .nii/.nii.gz, NRRD, MHA, ...), one per cell")
        if first_size is None:
            first, first_size = column, size
        elif size != first_size:
            raise CofeError(f"{path}:{line}: {column} is {_voxels(size)} voxels but {first} is {_voxels(first_size)} "
                            f"(subject {subject})",
                            hint="every image and the label of one subject must have the same size: resample them to one grid")
    return first_size or ()


def check_csv(path: Path, *, problem_type: str | None, channels: int | None = None) -> CheckedCsv:
    """Check one GaNDLF CSV: required columns present, at least one row, every listed file an image, one size per subject."""
    header, rows = _read_csv(path)
    columns = classify_columns(header)
    if problem_type is None:
        problem_type = "segmentation" if columns.label and not columns.values else "classification"
        if not columns.label and not columns.values:
            raise CofeError(f"{path} has neither a Label nor a ValueToPredict column (header: {','.join(header) or 'empty'})",
                            hint="segmentation CSVs need SubjectID,Channel_0,...,Label; classification/regression ones ...,ValueToPredict")
    needed = "Label" if problem_type == "segmentation" else "ValueToPredict"
    missing = []
    if columns.subject is None:
        missing.append("SubjectID")
    if not columns.channels:
        missing.append("Channel_0")
    if problem_type == "segmentation" and columns.label is None:
        missing.append("Label")
    if problem_type != "segmentation" and not columns.values:
        missing.append("ValueToPredict")
    if missing:
        raise CofeError(
            f"{path} lacks column(s) {', '.join(missing)} (header: {','.join(header) or 'empty'})",
            hint=f"a GaNDLF {problem_type} CSV needs SubjectID, Channel_0[, Channel_1...] and {needed}",
        )
    if channels is not None and len(columns.channels) != channels:
        raise CofeError(
            f"{path} has {len(columns.channels)} image channel column(s) but the model expects {channels}",
            hint="make the CSV's Channel_* columns match the config's model num_channels",
        )
    if not rows:
        raise CofeError(f"{path} lists no subjects", hint="add at least one row per CSV")
    file_columns = list(columns.channels) + ([columns.label] if problem_type == "segmentation" else [])
    sizes = []
    for line, row in enumerate(rows, start=2):
        for column in file_columns:
            value = row.get(column, "")
            if not value:
                raise CofeError(f"{path}:{line}: column {column} is empty", hint="every row needs a file in each image/label column")
            if not _resolve(value, path.parent).is_file():
                raise CofeError(
                    f"{path}:{line}: {column} file does not exist: {value}",
                    hint="relative paths are read from the CSV's own folder",
                )
        sizes.append(_check_images(path, line, row, file_columns, row[columns.subject]))
    return CheckedCsv(columns, rows, sizes)


def _grid(size: tuple[int, ...], patch: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(size) + (1,) * (len(patch) - len(size))  # a 2D image is one voxel deep


def _fitting(sizes: list[tuple[int, ...]], patch: tuple[int, ...]) -> tuple[int, ...]:
    """The largest patch every volume holds: per axis, the smaller of the patch and the smallest volume."""
    return tuple(min(p, *axis) for p, axis in zip(patch, zip(*(_grid(size, patch) for size in sizes))))


def check_patch_fits(sizes: list[tuple[int, ...]], patch_size: Sequence[int], *, padding: bool, where: Path) -> tuple[str, ...]:
    """GaNDLF's patch sampler (torchio) raises "Patch size ... cannot be larger than image size" for a volume
    smaller than the patch on any axis, unless the config pads volumes (patch_sampler: enable_padding)."""
    patch = tuple(int(n) for n in patch_size)
    if not patch or not sizes:
        return ()

    def too_small(size: tuple[int, ...]) -> bool:
        return any(g < p for g, p in zip(_grid(size, patch), patch))

    small = [size for size in sizes if too_small(size)]
    if not small:
        return ()
    smallest = tuple(min(axis) for axis in zip(*small))
    if not padding:
        raise CofeError(f"patch_size {list(patch)} is larger than {len(small)} of the {len(sizes)} volume(s) in {where} "
                        f"(down to {_voxels(smallest)} voxels): GaNDLF's patch sampler fails on them",
                        hint=f"make patch_size in the GaNDLF config fit every volume (at most {list(_fitting(sizes, patch))}), "
                             "or let GaNDLF pad them: patch_sampler: {type: uniform, enable_padding: true}")
    return (f"patch_size {list(patch)} is larger than {len(small)} of the {len(sizes)} volume(s) in {where} "
            f"(down to {_voxels(smallest)} voxels); GaNDLF pads them (enable_padding), so those patches are mostly padding",)


@dataclass(frozen=True)
class DataFacts:
    """What a site's CSV header tells about the model, for a config that does not say it itself."""

    source: Path
    channels: int
    problem_type: str | None  # "segmentation" (a Label column) or "classification" (ValueToPredict); None if neither


def data_facts(data_paths: Sequence[Path | None]) -> DataFacts | None:
    """From the first site whose data is given here (a folder's train.csv, or the CSV itself): only the
    header is read, as GaNDLF reads it. The other sites are checked against it later (check_csv)."""
    for data in data_paths:
        if data is None:
            continue
        csv_path = Path(data).expanduser()
        csv_path = csv_path / TRAIN_CSV if csv_path.is_dir() else csv_path
        if not csv_path.is_file():
            continue
        header, _rows = _read_csv(csv_path)
        columns = classify_columns(header)
        if not columns.channels:
            continue
        problem_type = "classification" if columns.values else "segmentation" if columns.label else None
        return DataFacts(csv_path, len(columns.channels), problem_type)
    return None


def expectations_of(gandlf_config: dict) -> dict:
    """What the model needs of a site's data, from the GaNDLF config: check_data_folder's and split_csv's keywords."""
    sampler = gandlf_config.get("patch_sampler")
    return {"problem_type": problem_type_of(gandlf_config),
            "channels": (gandlf_config.get("model") or {}).get("num_channels"),
            "patch_size": tuple(gandlf_config.get("patch_size") or ()),
            "padding": isinstance(sampler, dict) and bool(sampler.get("enable_padding"))}


def check_site_data(folder: Path, gandlf_config: dict) -> DataSummary:
    """A site's data folder as `cofe init`, `cofe start collaborator`, `cofe import` and `cofe doctor` check it."""
    return check_data_folder(folder, **expectations_of(gandlf_config))


def check_data_folder(folder: Path, *, problem_type: str | None, channels: int | None = None,
                      patch_size: Sequence[int] = (), padding: bool = False) -> DataSummary:
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise CofeError(f"data folder does not exist: {folder}", hint="give NAME=FOLDER with the site's train.csv and valid.csv")
    absent = [name for name in (TRAIN_CSV, VALID_CSV) if not (folder / name).is_file()]
    if absent:
        raise CofeError(
            f"data folder {folder} has no {' or '.join(absent)}",
            hint="give a folder with GaNDLF's train.csv and valid.csv, or NAME=one.csv for cofe to split",
        )
    train = check_csv(folder / TRAIN_CSV, problem_type=problem_type, channels=channels)
    valid = check_csv(folder / VALID_CSV, problem_type=problem_type, channels=channels)
    return _summary(folder, len(train.rows), len(valid.rows), valid.columns, train.volume_sizes + valid.volume_sizes,
                    patch_size=patch_size, padding=padding)


def _summary(folder: Path, train: int, valid: int, columns: CsvColumns, sizes: list[tuple[int, ...]], *,
             patch_size: Sequence[int], padding: bool) -> DataSummary:
    notes = check_patch_fits(sizes, patch_size, padding=padding, where=folder)
    smallest = tuple(min(axis) for axis in zip(*sizes)) if sizes else ()
    return DataSummary(Path(folder).resolve(), train, valid, len(columns.channels), smallest, notes)


def _subject_rank(subject: str, seed: int) -> str:
    # A hash, not random.shuffle: the split depends only on the subject IDs, never on row order.
    return hashlib.sha256(f"{seed}:{subject}".encode()).hexdigest()


def pick_valid_subjects(subjects: Sequence[str], *, valid_fraction: float, seed: int) -> set[str]:
    """The subjects that validate: `valid_fraction` of at least 2 subjects, but at least one and never all."""
    ranked = sorted(set(subjects), key=lambda s: _subject_rank(s, seed))
    return set(ranked[:min(len(ranked) - 1, max(1, round(len(ranked) * valid_fraction)))])


def split_csv(csv_path: Path, out_folder: Path, *, problem_type: str | None, channels: int | None = None,
              patch_size: Sequence[int] = (), padding: bool = False, valid_fraction: float = 0.2, seed: int = 0) -> DataSummary:
    """Split one GaNDLF CSV by subject into train.csv/valid.csv with absolute paths."""
    csv_path = Path(csv_path).expanduser().resolve()
    columns, rows, sizes = check_csv(csv_path, problem_type=problem_type, channels=channels)
    subjects = {row[columns.subject] for row in rows}
    if len(subjects) < 2:
        raise CofeError(f"{csv_path} has {len(subjects)} subject(s); a train/valid split needs at least 2",
                        hint="add subjects, or give a folder with train.csv and valid.csv")
    valid_subjects = pick_valid_subjects(subjects, valid_fraction=valid_fraction, seed=seed)
    summary = _summary(out_folder, len(subjects) - len(valid_subjects), len(valid_subjects), columns, sizes,
                       patch_size=patch_size, padding=padding)
    train_rows = [r for r in rows if r[columns.subject] not in valid_subjects]
    valid_rows = [r for r in rows if r[columns.subject] in valid_subjects]
    atomic_write_text(Path(out_folder) / TRAIN_CSV, _render_absolute(train_rows, columns, csv_path))
    atomic_write_text(Path(out_folder) / VALID_CSV, _render_absolute(valid_rows, columns, csv_path))
    return summary


def evaluation_only_data(csv_path: Path, out_folder: Path, *, problem_type: str | None, channels: int | None = None,
                         patch_size: Sequence[int] = (), padding: bool = False) -> DataSummary:
    """A site that only evaluates: every subject of its one CSV is validated. OpenFL's loader reads
    train.csv too, so it gets the same rows (no training task is ever assigned to the site)."""
    csv_path = Path(csv_path).expanduser().resolve()
    columns, rows, sizes = check_csv(csv_path, problem_type=problem_type, channels=channels)
    summary = _summary(out_folder, 0, len(rows), columns, sizes, patch_size=patch_size, padding=padding)
    rendered = _render_absolute(rows, columns, csv_path)
    atomic_write_text(Path(out_folder) / TRAIN_CSV, rendered)
    atomic_write_text(Path(out_folder) / VALID_CSV, rendered)
    return summary


def _render_absolute(rows: list[dict[str, str]], columns: CsvColumns, csv_path: Path) -> str:
    """The rows as a GaNDLF CSV whose image paths are absolute, so it stays valid wherever it is written."""
    file_columns = set(columns.channels) | ({columns.label} if columns.label else set())
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0].keys()), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (str(_resolve(v, csv_path.parent).resolve()) if k in file_columns else v)
                         for k, v in row.items()})
    return buffer.getvalue()


# GaNDLF 0.1.5's dice family and its surface_distance_ids (GANDLF/metrics/__init__.py).
_SEGMENTATION_METRICS = {
    "dice", "dice_score", "dc", "dice_coefficient",
    "hd95", "hd95_per_label", "hausdorff95_per_label", "hausdorff95", "hd100", "hd100_per_label", "hausdorff",
    "hausdorff100", "nsd", "nsd_per_label", "normalized_surface_dice", "normalized_surface_dice_per_label",
    "normalized_sd", "normalized_sd_per_label",
}
_CLASSIFICATION_LAYERS = {"classification_but_not_softmax", "logits", "classification_without_softmax", "classification_with_sigmoid"}


def problem_type_of(gandlf_config: dict) -> str | None:
    """GaNDLF's rule (GANDLF/utils/parameter_processing.py), without importing GaNDLF.

    None when only the data can tell: GaNDLF's training itself decides from the CSV's columns
    (ValueToPredict or Label) when the final layer could serve either problem."""
    final_layer = (gandlf_config.get("model") or {}).get("final_layer")
    if final_layer is None or str(final_layer).lower() in ("regression", "none"):
        return "regression"
    if str(final_layer).lower() in _CLASSIFICATION_LAYERS:
        return "classification"
    metrics = gandlf_config.get("metrics") or []
    names = metrics if isinstance(metrics, (list, dict)) else [metrics]
    if any(isinstance(name, str) and name.lower() in _SEGMENTATION_METRICS for name in names):
        return "segmentation"
    return None
