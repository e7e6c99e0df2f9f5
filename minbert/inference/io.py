"""What `minbert predict` reads and writes: texts from the command line (printed back as a small
table), or a file of inputs (CSV, TSV or JSONL, or stdin) whose predictions go to a CSV or
JSONL file (or stdout).

Input files: a header row (CSV, TSV) or one JSON object per line (JSONL), with the task's text
column(s) (`sentence` for sst; `sentence1` and `sentence2` for para and sts; a declared task's
`input:`), or the columns named by `--columns`;
an `id` column, where there is one, is carried over. The format comes from the extension
(`.jsonl`, `.ndjson`, `.json`: JSONL; `.tsv`: tab-separated); otherwise, and for stdin, from the
content: a first line starting with `{` is JSONL, one with a tab is TSV (the course's data
files are tab-separated `.csv`), else CSV. Blank lines are skipped. A malformed file stops
with `file:line: reason` (a missing column, a line that is not JSON, a wrong number of fields,
bytes that are not UTF-8) before anything is predicted; output files are written to a
temporary name and renamed, so a failure leaves no half-written file.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from minbert.inference.predictor import Binary, Classification, Predictions, Predictor
from minbert.run_files import atomic_write
from minbert.tasks.data import DataError
from minbert.tasks.spec import TaskSpec

OUTPUT_FORMATS = ("csv", "jsonl")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


@dataclass
class InputTable:
    name: str  # the file's path, or <stdin>
    columns: tuple[str, ...]  # the text columns read
    rows: list[tuple[str, ...]]  # their texts, one tuple per input
    ids: list[str] | None  # the `id` column, where there is one


# ---------------------------------------------------------------------------------------
# Reading


def read_inputs(source: str, spec: TaskSpec, columns: Sequence[str] | None = None) -> InputTable:
    """The inputs of a task from a file (or "-", stdin); `columns` names the text column(s)
    where they are not the task's own (`sentence`; `sentence1`, `sentence2`)."""
    wanted = tuple(columns) if columns else spec.text_columns
    if len(wanted) != len(spec.text_columns):
        need = len(spec.text_columns)
        raise ValueError(f"--task {spec.name} reads {need} text column(s); --columns names {len(wanted)}")
    name = "<stdin>" if source == "-" else source
    if source == "-":
        raw = sys.stdin.buffer.read()
    elif not Path(source).is_file():
        raise DataError(name, None, "no such file")
    else:
        raw = Path(source).read_bytes()
    text = _decode(raw, name)
    first = next((line for line in text.split("\n") if line.strip()), "")
    suffix = Path(name).suffix.lower()
    if suffix in JSONL_SUFFIXES or (suffix != ".tsv" and first.lstrip().startswith("{")):
        return _read_jsonl(text, name, wanted)
    delimiter = "\t" if suffix == ".tsv" or "\t" in first else ","
    return _read_delimited(text, name, wanted, delimiter)


def _decode(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8-sig")  # a byte-order mark, as some editors write, is dropped
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(name, line, f"not UTF-8 text (byte 0x{raw[e.start]:02x}); save the file as UTF-8") from None


def _read_delimited(text: str, name: str, wanted: tuple[str, ...], delimiter: str) -> InputTable:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        raise DataError(name, None, "empty file: no header row")
    kind = "tab-separated" if delimiter == "\t" else "comma-separated"
    absent = [c for c in wanted if c not in header]
    if absent:
        raise DataError(name, 1, f"no column {', '.join(map(repr, absent))} in the header {header} ({kind}); "
                                 "name the text column(s) with --columns")  # fmt: skip
    at = [header.index(c) for c in wanted]
    id_at = header.index("id") if "id" in header else None
    table = InputTable(name, wanted, [], [] if id_at is not None else None)
    end = reader.line_num
    for row in reader:
        start, end = end + 1, reader.line_num
        if not row:
            continue
        if len(row) != len(header):
            raise DataError(name, start, f"expected {len(header)} {kind} fields (as the header), found {len(row)}")
        table.rows.append(tuple(row[i] for i in at))
        if id_at is not None:
            table.ids.append(row[id_at])
    return table


def _read_jsonl(text: str, name: str, wanted: tuple[str, ...]) -> InputTable:
    table = InputTable(name, wanted, [], None)
    ids: list[str | None] = []
    for number, line in enumerate(text.split("\n"), start=1):  # not splitlines: JSON may hold U+2028
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(name, number, f"not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(record, dict):
            raise DataError(name, number, f"expected a JSON object, found {type(record).__name__}")
        for column in wanted:
            if column not in record:
                fields = ", ".join(record)
                raise DataError(name, number, f"no field {column!r} (fields: {fields}); name them with --columns")
            if not isinstance(record[column], str):
                raise DataError(name, number, f"field {column!r} is {type(record[column]).__name__}, not a string")
        table.rows.append(tuple(record[c] for c in wanted))
        ids.append(None if record.get("id") is None else str(record["id"]))
    if any(i is not None for i in ids):
        table.ids = [i or "" for i in ids]
    return table


# ---------------------------------------------------------------------------------------
# Writing


def output_format(output: str | None, requested: str | None) -> str:
    if requested:
        return requested
    return "jsonl" if output and Path(output).suffix.lower() in JSONL_SUFFIXES else "csv"


def result_fields(result: Classification | Binary | float) -> dict:
    """A result's fields, named by its kind: label, name, probabilities (classification);
    probability, positive (binary); score (regression)."""
    if isinstance(result, Classification):
        return {"label": result.label, "name": result.name, "probabilities": list(result.probabilities)}
    if isinstance(result, Binary):
        return {"probability": result.probability, "positive": result.positive}
    return {"score": result}


def records(table: InputTable, predictions: Predictions) -> list[dict]:
    """One output record per input: its id (where the input has ids), texts, prediction, and
    whether it was truncated."""
    out = []
    for i, (texts, result) in enumerate(zip(table.rows, predictions.results)):
        record = {"id": table.ids[i]} if table.ids is not None else {}
        record |= dict(zip(table.columns, texts)) | result_fields(result)
        out.append(record | {"truncated": predictions.truncated[i]})
    return out


def _csv_row(record: dict, names: Sequence[str]) -> dict:
    """Flat CSV cells: one column per class probability (`names`: the classes), booleans as 1 / 0."""
    row = {k: int(v) if isinstance(v, bool) else v for k, v in record.items() if k != "probabilities"}
    if "probabilities" in record:
        at = list(row).index("name") + 1
        items = list(row.items())
        probabilities = [(f"p_{n.replace(' ', '_')}", p) for n, p in zip(names, record["probabilities"])]
        row = dict(items[:at] + probabilities + items[at:])
    return row


def render(rows: list[dict], fmt: str, names: Sequence[str] = ()) -> str:
    """The records as JSONL, or as CSV (`names`: the class names of a classification task's columns)."""
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"output format {fmt!r} is not one of {OUTPUT_FORMATS}")
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    flat = [_csv_row(r, names) for r in rows]
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(flat[0]) if flat else ["prediction"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    return buffer.getvalue()


def predict_file(predictor: Predictor, task: str, source: str, columns: Sequence[str] | None, output: str | None,
                 fmt: str | None, progress: bool = True) -> str:  # fmt: skip
    """`minbert predict --input`: read, predict, write (atomically; stdout without `output`).
    Returns a one-line summary: how many inputs, how many truncated, where they went.
    (7 parameters: `minbert predict --input`'s options, one each.)"""
    spec = predictor.tasks.check(task)
    table = read_inputs(source, spec, columns)
    bar = None if progress and len(table.rows) > predictor.batch_size else False  # on terminals, for large files
    predictions = predictor.predict(task, predictor_inputs(spec, table.rows), progress=bar)
    text = render(records(table, predictions), output_format(output, fmt), spec.class_names)
    if output:
        atomic_write(output, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    where = output or "stdout"
    return (f"{len(table.rows)} input(s) from {table.name} -> {where}; {predictions.truncated_count} truncated to "
            f"{predictions.max_length} tokens")  # fmt: skip


# ---------------------------------------------------------------------------------------
# Texts from the command line


def predictor_inputs(spec: TaskSpec, rows: list[tuple[str, ...]]) -> list:
    """Rows of texts as the Predictor takes them: texts (a single-text task), pairs (a pair task)."""
    return rows if spec.is_pair else [texts for (texts,) in rows]


def answer_texts(predictor: Predictor, task: str, texts: Sequence[str]) -> str:
    """`minbert predict` with texts on the command line: the predictions as a table."""
    spec = predictor.tasks.check(task)
    rows = rows_from_texts(spec, texts)
    return table(spec, rows, predictor.predict(task, predictor_inputs(spec, rows)))


def rows_from_texts(spec: TaskSpec, texts: Sequence[str]) -> list[tuple[str, ...]]:
    """A single-text task: one input per text; a pair task: texts taken two by two as pairs."""
    if not spec.is_pair:
        return [(t,) for t in texts]
    if len(texts) % 2:
        raise ValueError(f"--task {spec.name} compares pairs: give an even number of texts (a1 b1 a2 b2 ...), "
                         f"not {len(texts)}")  # fmt: skip
    return [(texts[i], texts[i + 1]) for i in range(0, len(texts), 2)]


# The table's columns for the seed's three tasks; a declared task's are named by its kind.
TABLE_HEADS = {"sst": ["label", "sentiment", "probability"], "para": ["paraphrase", "probability"],
               "sts": ["similarity (0-5)"]}  # fmt: skip
KIND_HEADS = {"classification": ["label", "class", "probability"], "binary": ["positive", "probability"],
              "regression": ["score"]}  # fmt: skip


def table(spec: TaskSpec, rows: list[tuple[str, ...]], predictions: Predictions) -> str:
    """A small aligned table of the predictions; truncated inputs are marked with `*`."""
    texts_head = {"para": "question 1 | question 2"}.get(spec.name, "sentence 1 | sentence 2" if spec.is_pair else "text")
    seed = spec.name in TABLE_HEADS and spec.is_builtin
    head = (TABLE_HEADS[spec.name] if seed else KIND_HEADS[spec.kind]) + [texts_head]
    if spec.kind == "classification":
        cells = [[str(r.label), r.name, f"{r.probabilities[r.label]:.3f}"] for r in predictions.results]
    elif spec.kind == "binary":
        cells = [["yes" if r.positive else "no", f"{r.probability:.3f}"] for r in predictions.results]
    else:
        cells = [[f"{r:.3f}"] for r in predictions.results]
    marks = [" *" if cut else "" for cut in predictions.truncated]
    lines = [c + [" | ".join(texts) + mark] for c, texts, mark in zip(cells, rows, marks)]
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head) - 1)]
    out = ["  ".join([h.ljust(w) for h, w in zip(head, widths)] + [head[-1]])]
    out += ["  ".join([c.rjust(w) if c[:1].isdigit() else c.ljust(w) for c, w in zip(line, widths)] + [line[-1]])
            for line in lines]  # fmt: skip
    if predictions.truncated_count:
        out.append(f"* truncated to the model's {predictions.max_length} tokens")
    return "\n".join(out)
