"""Reading, validating, tokenising and batching the CS224N-format data files.

Every file is tab-separated with a header row. Columns are found by name in the header, so
the SST test file's odd header (`0<TAB><TAB>id<TAB>sentence`) reads like the others. Every row
is checked before any training starts; a bad row raises `DataError` naming file, line and
reason, or, with `skip_bad_rows`, is counted and left out.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

# Some Quora questions are long; the csv module's default field limit (128 KiB) is ample,
# but be explicit so a pathological file fails on our validation, not on csv's.
csv.field_size_limit(1 << 24)


class DataError(ValueError):
    """A data file that cannot be used: names the file, the line and the reason."""

    def __init__(self, path: Path | str, line: int | None, reason: str):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")
        self.path, self.line, self.reason = str(path), line, reason


@dataclass(frozen=True)
class Example:
    id: str
    texts: tuple[str, ...]  # one sentence, or the two sides of a pair
    label: float | int | None  # None for the held-out test files


@dataclass
class ReadResult:
    examples: list[Example]
    skipped: int  # bad rows left out (only with skip_bad_rows)
    path: Path


def default_data_dir() -> Path | None:
    """`../shared/data` seen from the working directory or from the package's checkout."""
    here = Path(__file__).resolve().parent
    for base in (Path.cwd(), Path.cwd().parent, here.parent, here.parent.parent):
        for candidate in (base / "shared" / "data", base / ".." / "shared" / "data"):
            if (candidate / "ids-sst-train.csv").exists():
                return candidate.resolve()
    return None


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    if data_dir:
        path = Path(data_dir)
        if not path.is_dir():
            raise DataError(path, None, "data directory does not exist")
        return path
    found = default_data_dir()
    if found is None:
        raise DataError("../shared/data", None, "no data directory found; pass --data.dir=PATH")
    return found


def read_table(
    path: str | Path,
    text_columns: Sequence[str],
    label_column: str | None,
    parse_label: Callable[[str], float | int] | None,
    skip_bad_rows: bool = False,
) -> ReadResult:
    """Read one CS224N-format file. `label_column=None` reads a held-out (unlabelled) file."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, None, "file not found")
    needed = ["id", *text_columns] + ([label_column] if label_column else [])
    examples: list[Example] = []
    skipped = 0
    seen_ids: set[str] = set()
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None:
            raise DataError(path, 1, "empty file: no header row")
        absent = [c for c in needed if c not in header]
        if absent:
            raise DataError(
                path, 1, f"wrong header: missing column(s) {', '.join(absent)}; expected {needed}, got {header}"
            )
        col = {c: header.index(c) for c in needed}
        line = reader.line_num
        for row in reader:
            start, line = line + 1, reader.line_num
            try:
                examples.append(_parse_row(row, header, col, text_columns, label_column, parse_label, seen_ids))
            except ValueError as e:
                if not skip_bad_rows:
                    raise DataError(path, start, str(e)) from None
                skipped += 1
    if not examples:
        raise DataError(path, None, "no data rows")
    return ReadResult(examples, skipped, path)


def _parse_row(row, header, col, text_columns, label_column, parse_label, seen_ids) -> Example:
    if not row:
        raise ValueError("empty line")
    if len(row) != len(header):
        raise ValueError(f"expected {len(header)} tab-separated fields, found {len(row)}")
    ex_id = row[col["id"]].strip()
    if not ex_id:
        raise ValueError("empty id")
    if ex_id in seen_ids:
        raise ValueError(f"duplicate id {ex_id!r}")
    texts = tuple(row[col[c]].strip() for c in text_columns)
    for c, t in zip(text_columns, texts):
        if not t:
            raise ValueError(f"empty {c}")
    label = None
    if label_column is not None:
        raw = row[col[label_column]].strip()
        try:
            label = parse_label(raw)
        except ValueError as e:
            raise ValueError(f"bad {label_column} {raw!r}: {e}") from None
    seen_ids.add(ex_id)
    return Example(ex_id, texts, label)


# ---------------------------------------------------------------------------------------
# Batching: pad each batch to its own longest sequence; bucket by length to pad little.


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the batch's longest sequence: (input_ids (B, T), attention_mask (B, T))."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def length_bucketed_batches(
    lengths: Sequence[int], batch_size: int, rng: random.Random, bucket_batches: int = 50
) -> list[list[int]]:
    """Shuffle, cut into chunks of `bucket_batches` batches, sort each chunk by length, batch,
    then shuffle the batches. Batches stay random in content and order but hold sequences of
    similar length, so padding (wasted compute) is small."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * bucket_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches.extend(part[j : j + batch_size] for j in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Deterministic batches of similar length for evaluation; callers restore input order."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[j : j + batch_size] for j in range(0, len(order), batch_size)]

