"""Reading, validating and batching the data files (CS224N's format and others), the
soft-label files an ensemble writes for distillation, and the fingerprints of the files a run
read (so that a resumed run can tell that they changed, and a score can be traced to its data).

Every file is UTF-8, tab-separated, with a header row. Columns are found by name in the
header, so the SST test file's odd header (`0<TAB><TAB>id<TAB>sentence`) reads like the others.
A field may be CSV-quoted (`"..."`, a literal quote doubled as `""`), but a row is one physical
line: a quote opened in a field must close in it, on that line. So a stray quote is an error
on its own line instead of the csv module's swallowing every row up to the next quote.
Every row is checked before any training starts; a bad row raises `DataError` naming file,
line and reason, or, with `skip_bad_rows`, is left out and listed. A held-out (test) file
never loses a row: each needs a prediction.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import itertools
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from minbert.run_files import atomic_write

# The longest real row is a few KB. A longer line is rejected before csv sees it (a lost line
# break, a binary file), so csv's own field limit is never the one that fails.
MAX_LINE_BYTES = 1 << 20
csv.field_size_limit(MAX_LINE_BYTES)
MAX_REASON_CHARS = 240  # a message quotes data; it never carries a whole field
SKIPPED_LISTED = 10  # skipped rows named one by one; the rest are counted
NEVER_SKIPPED = "a test file's rows are never skipped: each needs a prediction"


def _clip(text: str, limit: int = 80) -> str:
    """`text`, or its first `limit` characters and how long it was: data quoted in a message."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


class DataError(ValueError):
    """A data file that cannot be used: names the file, the line and the reason, on one line."""

    def __init__(self, path: Path | str, line: int | None, reason: str):
        where = f"{path}:{line}" if line is not None else str(path)
        reason = _clip(reason, MAX_REASON_CHARS)
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
    skipped_rows: list[tuple[int, str]]  # (line, reason) of each bad row left out (skip_bad_rows)
    path: Path

    @property
    def skipped(self) -> int:
        return len(self.skipped_rows)

    def skipped_summary(self) -> str:
        """`skipped 12 bad row(s): line 3 (empty sentence), line 5 (bad sentiment '9'), ..., and 2 more`:
        the first rows by line, each with the head of its reason."""
        first = self.skipped_rows[:SKIPPED_LISTED]
        listed = ", ".join(f"line {line} ({_clip(reason.partition(': ')[0])})" for line, reason in first)
        more = self.skipped - SKIPPED_LISTED
        return f"skipped {self.skipped} bad row(s): {listed}" + (f", and {more} more" if more > 0 else "")


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
            raise DataError(path, None, "not a directory" if path.exists() else "data directory does not exist")
        return path
    found = default_data_dir()
    if found is None:
        raise DataError("../shared/data", None, "no data directory found; pass --data.dir=PATH")
    return found


FORMATS = ("tsv", "csv", "jsonl")


def read_table(
    path: str | Path,
    text_columns: Sequence[str],
    label_column: str | None,
    parse_label: Callable[[str], float | int] | None,
    skip_bad_rows: bool = False,
    id_column: str = "id",
    fmt: str = "tsv",
) -> ReadResult:
    """Read one data file: `tsv` (the CS224N format) or `csv` with a header row, or `jsonl`
    (one JSON object per line, the columns as keys). `label_column=None` reads a held-out
    (unlabelled) file, whose bad rows are errors even with `skip_bad_rows`: a test file never
    loses a row.
    (7 parameters: a file and what its rows hold; RowSchema bundles them for the row parser.)"""
    path = Path(path)
    if path.is_dir():
        raise DataError(path, None, "is a directory, not a data file")
    if not path.exists():
        raise DataError(path, None, "file not found")
    needed = [id_column, *text_columns] + ([label_column] if label_column else [])
    schema = RowSchema(tuple(text_columns), label_column, parse_label, id_column, fmt)
    examples: list[Example] = []
    skipped: list[tuple[int, str]] = []
    seen_ids: set[str] = set()
    header: list[str] | None = None
    if fmt == "jsonl":  # no header line: every object names its columns
        header, col = needed, {c: i for i, c in enumerate(needed)}
    with path.open("rb") as f:
        for line, raw in enumerate(f, start=1):
            try:
                if fmt == "jsonl":
                    row = _json_row(raw, needed)
                else:
                    row = _split_line(raw, "," if fmt == "csv" else "\t")
                    if header is None:
                        header, col = row, _columns(row, needed, fmt)
                        continue
                examples.append(_parse_row(row, header, col, schema, seen_ids))
            except ValueError as e:
                if header is None or not skip_bad_rows:
                    raise DataError(path, line, str(e)) from None
                if label_column is None:
                    raise DataError(path, line, f"{e} ({NEVER_SKIPPED})") from None
                skipped.append((line, str(e)))
    if header is None:
        raise DataError(path, 1, "empty file: no header row")
    if not examples:
        raise DataError(path, None, "no data rows" + (f" ({len(skipped)} bad row(s) skipped)" if skipped else ""))
    return ReadResult(examples, skipped, path)


def _decode(raw: bytes) -> str:
    if len(raw) > MAX_LINE_BYTES:
        limit = f"the {MAX_LINE_BYTES:,}-byte limit of one row"
        raise ValueError(f"line is {len(raw):,} bytes, over {limit} (a lost line break?)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = f"byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the line"
        raise ValueError(f"invalid UTF-8: {bad} ({e.reason})") from None


def _split_line(raw: bytes, delimiter: str = "\t") -> list[str]:
    """One physical line -> its fields, CSV quotes undone within the line (csv's strict mode).
    Raises ValueError with the reason a user can act on."""
    text = _decode(raw)
    try:
        return next(csv.reader([text], delimiter=delimiter, strict=True), [])
    except csv.Error as e:
        reason = _CSV_REASONS.get(str(e).split(" - ")[0].replace(repr(delimiter), "'\t'"), f"not a well-formed row ({e})")
        return _raise(reason.replace("'\t' expected", f"{delimiter!r} expected"))


def _raise(reason: str):
    raise ValueError(reason)


def _json_row(raw: bytes, needed: list[str]) -> list[str]:
    """One JSON Lines object -> the needed columns' values, as strings, in `needed` order."""
    text = _decode(raw).strip()
    if not text:
        return []
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    absent = [c for c in needed if c not in obj]
    if absent:
        raise ValueError(f"missing key(s) {', '.join(absent)}; has {_clip(repr(sorted(obj)))}")
    return ["" if obj[c] is None else str(obj[c]) for c in needed]


_CSV_REASONS = {
    "unexpected end of data": 'unbalanced quote: a field that starts with " must end with " on the same line '
    '(a row never spans lines; a literal " inside quotes is written "")',
    "'\t' expected after '\"'": 'stray quote: text after the closing " of a quoted field '
    '(a literal " inside quotes is written "")',
    "new-line character seen in unquoted field": "carriage return (\\r) inside a line: lines must end in \\n or \\r\\n",
}


def _columns(header: list[str], needed: list[str], fmt: str = "tsv") -> dict[str, int]:
    absent = [c for c in needed if c not in header]
    if absent:
        hint = f" (the file must be {'tab' if fmt == 'tsv' else 'comma'}-separated)" if len(header) == 1 else ""
        missing = f"missing column(s) {', '.join(absent)}{hint}"
        raise ValueError(f"wrong header: {missing}; expected {needed}, got {_clip(repr(header))}")
    return {c: header.index(c) for c in needed}


@dataclass(frozen=True)
class RowSchema:
    """What a file's rows must hold: text columns, a label column (None: a held-out file) and its
    parser, the id column, and the file's format."""

    text_columns: tuple[str, ...]
    label_column: str | None
    parse_label: Callable[[str], float | int] | None
    id_column: str = "id"
    fmt: str = "tsv"


def _parse_row(row: list[str], header: list[str], col: dict[str, int], schema: RowSchema, seen_ids: set[str]) -> Example:
    text_columns, label_column = schema.text_columns, schema.label_column
    if not row:
        raise ValueError("empty line")
    if len(row) != len(header):
        sep = "comma" if schema.fmt == "csv" else "tab"
        raise ValueError(f"expected {len(header)} {sep}-separated fields, found {len(row)}")
    ex_id = row[col[schema.id_column]].strip()
    if not ex_id:
        raise ValueError("empty id")
    if ex_id in seen_ids:
        raise ValueError(f"duplicate id {_clip(repr(ex_id))}")
    texts = tuple(row[col[c]].strip() for c in text_columns)
    for c, t in zip(text_columns, texts):
        if not t:
            raise ValueError(f"empty {c}")
    label = None
    if label_column is not None:
        raw = row[col[label_column]].strip()
        try:
            label = schema.parse_label(raw)
        except ValueError as e:
            raise ValueError(f"bad {label_column} {_clip(repr(raw))}: {e}") from None
    seen_ids.add(ex_id)
    return Example(ex_id, texts, label)


# ---------------------------------------------------------------------------------------
# Batching: pad each batch to its own longest sequence; bucket by length to pad little.


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int = 0, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to `length` (default: the batch's longest sequence): (input_ids (B, T),
    attention_mask (B, T)). Whole tensors, not row by row: the mask from the lengths, then every
    token written into its place in one copy: 8 operators for any batch, where writing row by
    row took 7 a row."""
    lengths = [len(s) for s in seqs]
    T = max(lengths) if length is None else length
    if T < max(lengths):
        raise ValueError(f"pad_batch: a sequence of {max(lengths)} tokens does not fit in length {T}")
    mask = torch.arange(T) < torch.tensor(lengths)[:, None]  # (B, T)
    ids = torch.full(mask.shape, pad_id, dtype=torch.long)
    ids[mask] = torch.tensor(list(itertools.chain.from_iterable(seqs)), dtype=torch.long)  # row-major, as the mask
    return ids, mask.long()


def has_padding(seqs: Sequence[Sequence[int]], length: int | None = None) -> bool:
    """Whether `pad_batch` (to `length`, default the longest) pads any of these sequences."""
    lengths = {len(s) for s in seqs}
    return len(lengths) > 1 or (length is not None and length > max(lengths))


def bucket_length(longest: int, buckets: Sequence[int] | None) -> int:
    """The length a batch whose longest sequence has `longest` tokens is padded to: the smallest
    of the (increasing) `buckets` that holds it (train.length_buckets), so that a run's batches
    come in a few shapes; without buckets, or above the last one, `longest` itself."""
    for b in buckets or ():
        if b >= longest:
            return b
    return longest


def pack_rows(lengths: Sequence[int], width: int) -> list[list[int]]:
    """Which sequences share a row of `width` tokens: first-fit decreasing (longest first, each
    into the first row with room for it, else a new row), so rows are few and padding sits only
    at row ends. Every length must be at most `width`. Deterministic: ties keep input order."""
    rows: list[list[int]] = []
    room: list[int] = []  # free tokens left in each row
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = next((r for r, free in enumerate(room) if free >= lengths[i]), len(rows))
        if r == len(rows):
            rows.append([])
            room.append(width)
        rows[r].append(i)
        room[r] -= lengths[i]
    return rows


@dataclass
class Packed:
    """Sequences laid end to end in rows (`pack_batch`), as the encoder takes them, and the way
    back to one padded row per sequence. Every tensor is indexed on the host's lengths: reading
    none of them back from a device is needed to build, move or use it."""

    input_ids: torch.Tensor  # (R, W): R rows of W tokens, padding at row ends only
    token_type_ids: torch.Tensor | None  # (R, W) for cross-encoded pairs
    position_ids: torch.Tensor  # (R, W): 0, 1, ... from each sequence's first token
    segments: torch.Tensor  # (R, W): the sequence each token belongs to (a row's padding: one of its own)
    unpack: torch.Tensor  # (N, T): position in the flattened (R * W) rows of sequence n's token t
    mask: torch.Tensor  # (N, T): the padded batch's attention mask, which tokens of unpack's rows are real

    @property
    def attention(self) -> torch.Tensor:
        """(R, W, W) boolean: query i may attend to key j where both lie in one sequence."""
        return self.segments[:, :, None] == self.segments[:, None, :]

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (getattr(self, f.name) for f in dataclasses.fields(self)) if t is not None]

    def to(self, move: Callable[[torch.Tensor | None], torch.Tensor | None]) -> "Packed":
        return Packed(*(move(getattr(self, f.name)) for f in dataclasses.fields(self)))


def pack_batch(
    seqs: Sequence[Sequence[int]], types: Sequence[Sequence[int]] | None, pad_id: int, width: int
) -> Packed:
    """The sequences (and their segment ids, for cross-encoded pairs) packed into rows of
    max(width, longest) tokens by `pack_rows`. Whole tensors, as in `pad_batch`: each token's
    place in the rows computed from the lengths, then every token written there in one copy."""
    lengths = [len(s) for s in seqs]
    T = max(lengths)
    W = max(width, T)
    rows = pack_rows(lengths, W)
    starts = [0] * len(seqs)  # each sequence's first token in the flattened rows
    for r, row in enumerate(rows):
        offset = r * W
        for i in row:
            starts[i], offset = offset, offset + lengths[i]
    N, R = len(seqs), len(rows)
    length = torch.tensor(lengths)
    t = torch.arange(T)
    mask = t < length[:, None]  # (N, T), as pad_batch's
    first = torch.tensor(starts)[:, None]  # (N, 1)
    place = first + t  # (N, T): where token t of sequence n goes
    dest = place[mask]  # (tokens,), in the order of the chained sequences

    def scatter(fill: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        fill[dest] = values
        return fill.view(R, W)

    chain = itertools.chain.from_iterable
    ids = scatter(torch.full((R * W,), pad_id, dtype=torch.long), torch.tensor(list(chain(seqs)), dtype=torch.long))
    token_types = None
    if types is not None:
        token_types = scatter(torch.zeros(R * W, dtype=torch.long), torch.tensor(list(chain(types)), dtype=torch.long))
    positions = scatter(torch.zeros(R * W, dtype=torch.long), t.expand(N, T)[mask])
    own_padding = torch.arange(R).repeat_interleave(W) + N  # a row's padding: segment N + r
    segments = scatter(own_padding, torch.arange(N).repeat_interleave(length))
    unpack = first + torch.minimum(t, length[:, None] - 1)  # padding: the last token (unread)
    return Packed(ids, token_types, positions, segments, unpack, mask.long())


def padding_fraction(lengths: Sequence[int], width: int | None = None) -> float:
    """The share of token slots that are padding: in one padded row per sequence (width None),
    or in rows packed by `pack_rows` at max(width, longest) tokens."""
    T = max(lengths)
    slots = len(lengths) * T if width is None else len(pack_rows(lengths, max(width, T))) * max(width, T)
    return 1 - sum(lengths) / slots


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


# ---------------------------------------------------------------------------------------
# Soft labels for distillation: `minbert ensemble --soft-labels` writes them, a run with
# train.distill_from reads them.


def soft_labels_path(ensemble_dir: str | Path, task: str) -> Path:
    return Path(ensemble_dir) / f"train-soft-{task}.jsonl"


def write_soft_labels(path: Path, ids: list[str], soft: torch.Tensor) -> None:
    """One JSON line per example, in input order: {"id": ..., "soft": a float or a list of floats}."""
    lines = "".join(json.dumps({"id": i, "soft": s}) + "\n" for i, s in zip(ids, soft.tolist()))
    atomic_write(path, lambda tmp: tmp.write_text(lines, encoding="utf-8"))


def load_soft_labels(ensemble_dir: str | Path, task: str, ids: Sequence[str]) -> torch.Tensor:
    """The soft labels `minbert ensemble --soft-labels` wrote for `task`, in the order of `ids`:
    float32 (N, K) class probabilities or (N,) values. A malformed line is a DataError naming
    file:line; an id without a label, one naming the file and the first such id."""
    path = soft_labels_path(ensemble_dir, task)
    if not path.is_file():
        raise DataError(path, None, f"no soft labels for {task}: write them with `minbert ensemble RUN ... "
                                    f"--out {ensemble_dir} --soft-labels {task}`")  # fmt: skip
    labels: dict[str, float | list[float]] = {}
    size = None  # K, or 0 for one value per example: the first line's, which every line must match
    for line, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            ex_id, soft = _soft_line(raw)
            shape = len(soft) if isinstance(soft, list) else 0
            if size is not None and shape != size:
                raise ValueError(f"'soft' has {shape or 'one value'}, earlier lines {size or 'one value'}")
            if ex_id in labels:
                raise ValueError(f"duplicate id {ex_id!r}")
        except ValueError as e:
            raise DataError(path, line, str(e)) from None
        size, labels[ex_id] = shape, soft
    missing = [i for i in ids if i not in labels]
    if missing:
        raise DataError(path, None, f"no soft label for id {missing[0]!r} ({len(missing)} of {len(ids)} ids missing)")
    return torch.tensor([labels[i] for i in ids], dtype=torch.float32)


def _soft_line(raw: bytes) -> tuple[str, float | list[float]]:
    """One line of a soft-label file -> (id, soft); a ValueError with the reason otherwise."""
    try:
        obj = json.loads(raw)
    except ValueError as e:  # not JSON, or not UTF-8
        raise ValueError(f"not valid JSON ({e})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("id"), str) or "soft" not in obj:
        raise ValueError('expected a JSON object {"id": "<example id>", "soft": <number or list of numbers>}')
    soft = obj["soft"]
    values = soft if isinstance(soft, list) else [soft]
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < float("inf")
                             for v in values):  # fmt: skip
        raise ValueError(f"'soft' must be a finite number or a non-empty list of them, got {soft!r}")
    return obj["id"], soft


# ---------------------------------------------------------------------------------------
# Fingerprints: what each file a run read was (size, line breaks, sha256). A run records them
# (data.json, its checkpoints, metrics.json, its exports); --resume and --init-from compare.

HASH_CHUNK = 1 << 20  # bytes read at a time


def fingerprint(path: str | Path) -> dict:
    """{"bytes": size, "lines": line breaks, "sha256": hex digest} of one file, read in chunks."""
    digest, size, lines = hashlib.sha256(), 0, 0
    try:
        with Path(path).open("rb") as f:
            while chunk := f.read(HASH_CHUNK):
                digest.update(chunk)
                size, lines = size + len(chunk), lines + chunk.count(b"\n")
    except FileNotFoundError:
        raise DataError(path, None, "file not found") from None
    except IsADirectoryError:
        raise DataError(path, None, "is a directory, not a data file") from None
    return {"bytes": size, "lines": lines, "sha256": digest.hexdigest()}


def fingerprints(paths: Sequence[Path], data_dir: Path) -> dict[str, dict]:
    """Each file's fingerprint, keyed by its path relative to `data_dir` (absolute for a file
    outside it, such as a teacher's soft labels), in the order of `paths`."""
    base = Path(data_dir).absolute()
    keys = [Path(p).absolute() for p in paths]
    return {str(k.relative_to(base) if k.is_relative_to(base) else k): fingerprint(p) for k, p in zip(keys, paths)}


def data_changes(recorded: dict, current: dict, data_dir: Path, common_only: bool = False) -> list[str]:
    """What differs between two sets of fingerprints, one phrase a file, naming it as read now:
    `DIR/ids-sst-train.csv: 8,545 -> 4,273 lines, 1,175,139 -> 587,211 bytes`, `...: content
    changed, same size (sha256 1f0a2b3c4d5e... -> 9e8d7c6b5a4f...)`, `...: no longer read`,
    `...: newly read`. `common_only`: the files both read, only (a run continued with --init-from
    may read more or fewer files than the run it continues)."""
    out = []
    for key in [*current, *(k for k in recorded if k not in current)]:
        name, was, now = Path(data_dir) / key, recorded.get(key), current.get(key)
        if was is None or now is None:
            if not common_only:
                out.append(f"{name}: {'newly read' if was is None else 'no longer read'}")
        elif was["bytes"] != now["bytes"]:
            lines = f"{was['lines']:,} -> {now['lines']:,} lines, " if was["lines"] != now["lines"] else ""
            out.append(f"{name}: {lines}{was['bytes']:,} -> {now['bytes']:,} bytes")
        elif was["sha256"] != now["sha256"]:
            digests = f"sha256 {was['sha256'][:12]}... -> {now['sha256'][:12]}..."
            out.append(f"{name}: content changed, same size ({digests})")
    return out

