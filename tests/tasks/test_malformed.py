"""Every bad input gets one clear line: each file of the corpus in tests/malformed/ through the
reader (a DataError naming file, line and reason) and through `minbert train` (exit code 2 and
one stderr line `minbert: error: <file>:<line>: <reason>`, no traceback); then bad command lines."""

import json
import shutil
from pathlib import Path

import pytest

from minbert.cli import main as cli_main
from minbert.config import load_config
from minbert.tasks.data import DataError
from minbert.tasks import BUILTIN
from minbert.runs import read_all

MALFORMED = Path(__file__).resolve().parent.parent / "malformed"

# The corpus: file in tests/malformed/ -> (task, split it stands in for, line, reason). Line None:
# the message names the file only.
CASES = {
    "stray_quote.csv": ("para", "train", 4, 'unbalanced quote: a field that starts with " must end with " on the same'),
    "text_after_quote.csv": ("sts", "train", 3, 'stray quote: text after the closing " of a quoted field'),
    "newline_in_quotes.csv": ("sst", "train", 3, "unbalanced quote"),
    "invalid_utf8.csv": ("sts", "train", 5, "invalid UTF-8: byte 0xe9 at byte 57 of the line"),  # saved as Latin-1
    "utf16.csv": ("sst", "dev", 1, "invalid UTF-8: byte 0xff at byte 1 of the line"),  # a spreadsheet's "Unicode text"
    "no_header.csv": ("sst", "dev", 1, "wrong header: missing column(s) id, sentence, sentiment"),
    "wrong_header.csv": ("para", "dev", 1, "wrong header: missing column(s) sentence1, sentence2"),
    "comma_separated.csv": ("sts", "dev", 1, "(the file must be tab-separated)"),
    "bad_label.csv": ("sst", "train", 4, "bad sentiment 'positive': expected an integer 0-4"),
    "label_out_of_range.csv": ("sts", "dev", 5, "bad similarity '5.5': expected a score between 0 and 5"),
    "nan_label.csv": ("para", "train", 3, "bad is_duplicate 'nan': expected 0 or 1"),
    "duplicate_id.csv": ("para", "dev", 5, "duplicate id 'ba5a217a4d0e18aad45346e2a'"),
    "missing_field.csv": ("sts", "train", 4, "expected 5 tab-separated fields, found 4"),
    "extra_field.csv": ("sst", "dev", 5, "expected 4 tab-separated fields, found 5"),  # a tab inside a sentence
    "empty_text.csv": ("para", "test", 4, "empty sentence2"),
    "empty_id.csv": ("sts", "test", 6, "empty id"),
    "blank_line.csv": ("sst", "test", 5, "empty line"),
    "empty_file.csv": ("sst", "train", 1, "empty file: no header row"),
    "only_header.csv": ("sts", "train", None, "no data rows"),
    "no_newline_long.csv": ("sst", "train", 1, "wrong header: missing column(s) sentiment"),  # 20 KB on one line
    "cr_line_endings.csv": ("para", "dev", 1, r"carriage return (\r) inside a line"),
}
MAX_MESSAGE = 400  # characters: a message quotes data, never a whole field


def data_dir_with(tmp_path: Path, small_data_dir: Path, task: str, split: str, source: Path | None) -> Path:
    """A copy of the small real data with one file replaced by `source` (None: a directory);
    returns the replaced file's path."""
    data = tmp_path / "data"
    shutil.copytree(small_data_dir, data)
    target = data / BUILTIN[task].files[split]
    target.unlink()
    if source is None:
        target.mkdir()
    else:
        shutil.copyfile(source, target)
    return target


def train_cli(capsys, data: Path, checkpoint: Path, out: Path, *extra: str) -> tuple[int, str]:
    argv = ["train", "--no-progress", "--out", str(out), f"--data.dir={data}", "--model", str(checkpoint), *extra]
    code = cli_main(argv)
    return code, capsys.readouterr().err


def assert_one_error_line(code: int, err: str, expected: str, exit_code: int = 2) -> None:
    assert code == exit_code, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("minbert: error: ") and expected in lines[0], lines[0]
    assert len(lines[0]) < MAX_MESSAGE + 20, lines[0]


@pytest.mark.parametrize("name", sorted(CASES))
def test_reader_names_file_line_and_reason(tmp_path, small_data_dir, name):
    task, split, line, reason = CASES[name]
    target = data_dir_with(tmp_path, small_data_dir, task, split, MALFORMED / name)
    with pytest.raises(DataError) as err:
        BUILTIN[task].read(target.parent, split)
    assert (err.value.path, err.value.line) == (str(target), line)
    assert reason in err.value.reason
    assert str(err.value) == (f"{target}:{line}" if line else f"{target}") + f": {err.value.reason}"
    assert "\n" not in str(err.value) and len(str(err.value)) < MAX_MESSAGE


@pytest.mark.parametrize("name", sorted(CASES))
def test_cli_prints_one_line_and_exits_2(tmp_path, small_data_dir, tiny_checkpoint, capsys, name):
    task, split, line, reason = CASES[name]
    target = data_dir_with(tmp_path, small_data_dir, task, split, MALFORMED / name)
    code, err = train_cli(capsys, target.parent, tiny_checkpoint, tmp_path / "run")
    where = f"{target}:{line}" if line else f"{target}"
    assert_one_error_line(code, err, f"minbert: error: {where}: ")
    assert reason in err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_the_long_line_is_clipped_in_the_message(tmp_path, small_data_dir):
    target = data_dir_with(tmp_path, small_data_dir, "sst", "train", MALFORMED / "no_newline_long.csv")
    with pytest.raises(DataError, match=r"\.\.\. \(21,\d{3} characters\)"):
        BUILTIN["sst"].read(target.parent, "train")


def test_a_data_path_that_is_a_directory(tmp_path, small_data_dir, tiny_checkpoint, capsys):
    target = data_dir_with(tmp_path, small_data_dir, "sst", "dev", None)
    with pytest.raises(DataError, match=f"^{target}: is a directory, not a data file$"):
        BUILTIN["sst"].read(target.parent, "dev")
    code, err = train_cli(capsys, target.parent, tiny_checkpoint, tmp_path / "run")
    assert_one_error_line(code, err, f"minbert: error: {target}: is a directory, not a data file")


def test_a_row_over_the_size_limit(tmp_path, small_data_dir):
    """A 17 MiB field (csv's own limit was 16 MiB): its line is rejected, and can be skipped."""
    header, *rows = (small_data_dir / "sts-train.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    huge = rows[1].split("\t")
    huge[2] = "x" * (17 << 20)
    source = tmp_path / "huge.csv"
    source.write_text(header + rows[0] + "\t".join(huge) + "".join(rows[2:]), encoding="utf-8")
    target = data_dir_with(tmp_path, small_data_dir, "sts", "train", source)
    with pytest.raises(DataError) as err:
        BUILTIN["sts"].read(target.parent, "train")
    assert err.value.line == 3 and "over the 1,048,576-byte limit of one row" in err.value.reason
    assert len(str(err.value)) < MAX_MESSAGE
    result = BUILTIN["sts"].read(target.parent, "train", skip_bad_rows=True)
    assert len(result.examples) == len(rows) - 1 and [line for line, _ in result.skipped_rows] == [3]


def test_invalid_utf8_can_be_skipped(tmp_path, small_data_dir):
    target = data_dir_with(tmp_path, small_data_dir, "sts", "train", MALFORMED / "invalid_utf8.csv")
    result = BUILTIN["sts"].read(target.parent, "train", skip_bad_rows=True)
    assert len(result.examples) == 5
    assert result.skipped_rows == [(5, "invalid UTF-8: byte 0xe9 at byte 57 of the line (invalid continuation byte)")]


def test_a_test_file_never_loses_a_row(tmp_path, small_data_dir, tiny_checkpoint, capsys):
    target = data_dir_with(tmp_path, small_data_dir, "para", "test", MALFORMED / "empty_text.csv")
    with pytest.raises(DataError, match=f"^{target}:4: empty sentence2 .*never skipped: each needs a prediction"):
        BUILTIN["para"].read(target.parent, "test", skip_bad_rows=True)
    code, err = train_cli(capsys, target.parent, tiny_checkpoint, tmp_path / "run", "--data.skip_bad_rows=true")
    assert_one_error_line(code, err, f"minbert: error: {target}:4: empty sentence2 (a test file's rows are never")


def test_skipped_rows_are_listed_by_line(tmp_path, small_data_dir, capsys):
    header, *rows = (small_data_dir / "ids-sst-train.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    bad = [r.rsplit("\t", 1)[0] + "\t9\n" for r in rows[:12]]  # lines 2-13: sentiment 9
    source = tmp_path / "bad.csv"
    source.write_text(header + "".join(bad) + "".join(rows[12:]), encoding="utf-8")
    target = data_dir_with(tmp_path, small_data_dir, "sst", "train", source)
    cfg = load_config(None, [f"data.dir={target.parent}", "data.skip_bad_rows=true"])
    assert len(read_all(cfg, {"train": ("sst",)})["train"]["sst"]) == len(rows) - 12
    printed = capsys.readouterr().out.strip()
    assert printed.startswith(f"{target}: skipped 12 bad row(s): line 2 (bad sentiment '9'), line 3 (bad sentiment")
    assert "line 11 (" in printed and "line 12 (" not in printed and printed.endswith(", and 2 more")


def test_a_diverged_model_is_an_error_not_a_score(tmp_path, small_data_dir, tiny_checkpoint, capsys):
    """lr=1e30 turns every weight to inf after one step: the run stops (exit 1, a run-time
    failure rather than bad input) before any score or prediction file exists."""
    code, err = train_cli(capsys, small_data_dir, tiny_checkpoint, tmp_path / "run", "--train.batch_size=8",
                          "--train.phases=[{epochs: 1, lr: 1.0e+30}]")  # fmt: skip
    assert_one_error_line(code, err, "training diverged: the ", exit_code=1)
    assert not (tmp_path / "run" / "best.safetensors").exists() and not list((tmp_path / "run").glob("*-output.csv"))


# ---------------------------------------------------------------------------------------
# Bad command lines: each exit code 2 and one line naming the key, the value and the range.

BAD_FLAGS = [
    (["--config", "nope"], "config 'nope' not found"),
    (["--train.sed=3"], "unknown config key 'train.sed'"),
    (["--nothing.here=1"], "unknown config key 'nothing'"),
    (["--train.batch_size=abc"], "train.batch_size: Value 'abc' of type 'str' could not be converted to Integer"),
    (["--train.phases.0.lr=fast"], "train.phases.0.lr: Value 'fast' of type 'str' could not be converted to Float"),
    (["--model.pooling=max"], "model.pooling: 'max' is not one of ('cls', 'mean')"),
    (["--train.batch_size=0"], "train.batch_size: 0 is out of range (allowed: >= 1)"),
    (["--train.batch_size=-8"], "train.batch_size: -8 is out of range (allowed: >= 1)"),
    (["--train.eval_batch_size=0"], "train.eval_batch_size: 0 is out of range (allowed: >= 1)"),
    (["--data.max_train_examples=0"], "data.max_train_examples: 0 is out of range (allowed: >= 1)"),
    (["--data.max_eval_examples=-1"], "data.max_eval_examples: -1 is out of range (allowed: >= 1)"),
    (["--train.threads=0"], "train.threads: 0 is out of range (allowed: >= 1)"),
    (["--train.phases.0.epochs=-1"], "train.phases.0.epochs: -1 is out of range (allowed: >= 0)"),
    (["--train.phases.0.full_epochs=-2"], "train.phases.0.full_epochs: -2 is out of range (allowed: >= 0)"),
    (["--train.phases.0.steps_per_epoch=0"], "train.phases.0.steps_per_epoch: 0 is out of range (allowed: >= 1)"),
    (["--train.phases.0.lr=nan"], "train.phases.0.lr: nan is out of range (allowed: > 0 and finite)"),
    (["--train.phases.0.lr=0"], "train.phases.0.lr: 0.0 is out of range (allowed: > 0 and finite)"),
    (["--train.phases.0.lr=inf"], "train.phases.0.lr: inf is out of range (allowed: > 0 and finite)"),
    (["--train.phases.0.head_lr=-5e-4"], "train.phases.0.head_lr: -0.0005 is out of range (allowed: > 0 and finite)"),
    (["--train.phases.0.weight_decay=-0.01"], "weight_decay: -0.01 is out of range (allowed: >= 0 and finite)"),
    (["--train.phases.0.warmup_ratio=1.5"], "warmup_ratio: 1.5 is out of range (allowed: 0 <= value <= 1)"),
    (["--train.phases.0.layer_lr_decay=0"], "layer_lr_decay: 0.0 is out of range (allowed: 0 < value <= 1)"),
    (["--model.head_dropout=1"], "model.head_dropout: 1.0 is out of range (allowed: 0 <= value < 1)"),
    (["--model.max_length=1000"], "model.max_length: 1000 is out of range (allowed: 1 <= value <= 512)"),
    (["--model.max_length=0"], "model.max_length: 0 is out of range (allowed: 1 <= value <= 512)"),
    # within BERT's 512, but the tiny checkpoint has 128 positions: checked when the model is built
    (["--model.max_length=256"], "model.max_length: 256 is more than the 128 positions (max_position_embeddings)"),
]


@pytest.mark.parametrize("extra, message", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flags(tmp_path, small_data_dir, tiny_checkpoint, capsys, extra, message):
    code, err = train_cli(capsys, small_data_dir, tiny_checkpoint, tmp_path / "run", *extra)
    assert_one_error_line(code, err, message)


def not_a_bert(kind: str, tmp_path: Path, tiny_checkpoint: Path) -> tuple[Path, str]:
    """A --model directory broken in one way, and the message expected for it."""
    path = tmp_path / "bert"
    if kind == "missing":
        return path, f"{path}: no such directory"
    if kind == "file":
        path.write_text("not a directory")
        return path, f"{path}: not a directory"
    shutil.copytree(tiny_checkpoint, path)
    config = path / "config.json"
    settings = json.loads(config.read_text())
    if kind == "no_config":
        config.unlink()
        return path, f"{path}: config.json not found"
    if kind == "broken_json":
        config.write_text(config.read_text()[:40])
        return path, f"{config}: not valid JSON: "
    if kind == "json_list":
        config.write_text(json.dumps(list(settings)))
        return path, f"{config}: expected a JSON object of BERT settings, got a JSON list"
    if kind == "string_hidden_size":
        config.write_text(json.dumps({**settings, "hidden_size": "32"}))
        return path, f"{config}: hidden_size must be an integer, got '32'"
    if kind == "not_bert":
        config.write_text(json.dumps({**settings, "model_type": "gpt2"}))
        return path, f"{config}: model_type is 'gpt2', not 'bert'"
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # kind == "truncated_weights"
    return path, f"{weights}: cannot read the weights (SafetensorError: "


@pytest.mark.parametrize("kind", ["missing", "file", "no_config", "broken_json", "json_list", "string_hidden_size",
                                  "not_bert", "truncated_weights"])  # fmt: skip
def test_model_that_is_not_a_bert(tmp_path, small_data_dir, tiny_checkpoint, capsys, kind):
    path, message = not_a_bert(kind, tmp_path, tiny_checkpoint)
    code, err = train_cli(capsys, small_data_dir, path, tmp_path / "run")
    assert_one_error_line(code, err, f"minbert: error: {message}")


@pytest.mark.parametrize("command", ["evaluate", "predict-files"])
def test_checkpoint_that_is_a_directory_or_missing(tmp_path, capsys, command):
    out = ["--out", str(tmp_path / "preds")] if command == "predict-files" else []
    for path, problem in [(tmp_path, "a directory without best.safetensors"), (tmp_path / "best.pt", "no such checkpoint")]:
        code = cli_main([command, "--checkpoint", str(path), *out])
        assert_one_error_line(code, capsys.readouterr().err, f"minbert: error: {path}: {problem}")
