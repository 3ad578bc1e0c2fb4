"""A site's GaNDLF data CSVs: checked before any process starts, split when given as one file.

GaNDLF finds columns by case-insensitive substring (see GANDLF/utils/write_parse.py), and
OpenFL's GaNDLF loader reads exactly `<data>/train.csv` and `<data>/valid.csv`.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

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


def check_csv(path: Path, *, problem_type: str | None, channels: int | None = None) -> tuple[CsvColumns, list[dict[str, str]]]:
    """Check one GaNDLF CSV: required columns present, at least one row, every listed file exists."""
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
    return columns, rows


def check_data_folder(folder: Path, *, problem_type: str | None, channels: int | None = None) -> DataSummary:
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise CofeError(f"data folder does not exist: {folder}", hint="give NAME=FOLDER with the site's train.csv and valid.csv")
    absent = [name for name in (TRAIN_CSV, VALID_CSV) if not (folder / name).is_file()]
    if absent:
        raise CofeError(
            f"data folder {folder} has no {' or '.join(absent)}",
            hint="give a folder with GaNDLF's train.csv and valid.csv, or NAME=one.csv for cofe to split",
        )
    _, train = check_csv(folder / TRAIN_CSV, problem_type=problem_type, channels=channels)
    columns, valid = check_csv(folder / VALID_CSV, problem_type=problem_type, channels=channels)
    return DataSummary(folder.resolve(), len(train), len(valid), len(columns.channels))


def _subject_rank(subject: str, seed: int) -> str:
    # A hash, not random.shuffle: the split depends only on the subject IDs, never on row order.
    return hashlib.sha256(f"{seed}:{subject}".encode()).hexdigest()


def split_csv(csv_path: Path, out_folder: Path, *, problem_type: str | None, channels: int | None = None,
              valid_fraction: float = 0.2, seed: int = 0) -> DataSummary:
    """Split one GaNDLF CSV by subject into train.csv/valid.csv with absolute paths."""
    csv_path = Path(csv_path).expanduser().resolve()
    columns, rows = check_csv(csv_path, problem_type=problem_type, channels=channels)
    subjects = sorted({row[columns.subject] for row in rows}, key=lambda s: _subject_rank(s, seed))
    if len(subjects) < 2:
        raise CofeError(f"{csv_path} has {len(subjects)} subject(s); a train/valid split needs at least 2",
                        hint="add subjects, or give a folder with train.csv and valid.csv")
    n_valid = min(len(subjects) - 1, max(1, round(len(subjects) * valid_fraction)))
    valid_subjects = set(subjects[:n_valid])
    train_rows = [r for r in rows if r[columns.subject] not in valid_subjects]
    valid_rows = [r for r in rows if r[columns.subject] in valid_subjects]
    atomic_write_text(Path(out_folder) / TRAIN_CSV, _render_absolute(train_rows, columns, csv_path))
    atomic_write_text(Path(out_folder) / VALID_CSV, _render_absolute(valid_rows, columns, csv_path))
    return DataSummary(Path(out_folder).resolve(), len(subjects) - n_valid, n_valid, len(columns.channels))


def evaluation_only_data(csv_path: Path, out_folder: Path, *, problem_type: str | None,
                         channels: int | None = None) -> DataSummary:
    """A site that only evaluates: every subject of its one CSV is validated. OpenFL's loader reads
    train.csv too, so it gets the same rows (no training task is ever assigned to the site)."""
    csv_path = Path(csv_path).expanduser().resolve()
    columns, rows = check_csv(csv_path, problem_type=problem_type, channels=channels)
    rendered = _render_absolute(rows, columns, csv_path)
    atomic_write_text(Path(out_folder) / TRAIN_CSV, rendered)
    atomic_write_text(Path(out_folder) / VALID_CSV, rendered)
    return DataSummary(Path(out_folder).resolve(), 0, len(rows), len(columns.channels))


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
