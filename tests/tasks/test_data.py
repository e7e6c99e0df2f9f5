"""Readers: every shared file parses to its documented size; bad files fail clearly."""

import random

import pytest
import torch

from minbert.tasks.data import DataError, length_bucketed_batches, pad_batch, read_table, resolve_data_dir
from minbert.tasks import BUILTIN

# Row counts from ../shared/data/README.md.
COUNTS = {
    ("sst", "train"): 8544, ("sst", "dev"): 1101, ("sst", "test"): 2210,
    ("para", "train"): 47206, ("para", "dev"): 5000, ("para", "test"): 20212,
    ("sts", "train"): 6040, ("sts", "dev"): 863, ("sts", "test"): 1725,
}  # fmt: skip


@pytest.mark.parametrize("task, split", sorted(COUNTS))
def test_shared_files_parse_to_documented_counts(data_dir, task, split):
    result = BUILTIN[task].read(data_dir, split)
    assert len(result.examples) == COUNTS[task, split]
    assert result.skipped == 0
    labels = [e.label for e in result.examples]
    if split == "test":
        assert set(labels) == {None}
    elif task == "sst":
        assert set(labels) == {0, 1, 2, 3, 4}
    elif task == "para":
        assert set(labels) == {0.0, 1.0}
    else:
        assert min(labels) >= 0.0 and max(labels) <= 5.0


def test_sst_test_file_odd_header(data_dir):
    first = BUILTIN["sst"].read(data_dir, "test").examples[0]
    assert first.id == "b7573736a6ddf7be102b7fee0"
    assert first.texts == ("Effective but too-tepid biopic",)


def test_cfimdb_reads_as_binary_sentiment(data_dir):
    result = read_table(data_dir / "ids-cfimdb-train.csv", ("sentence",), "sentiment", int)
    assert len(result.examples) == 1707
    assert len(read_table(data_dir / "ids-cfimdb-test-student.csv", ("sentence",), None, None).examples) == 488


def test_csv_quoting_is_undone(data_dir):
    texts = [t for e in BUILTIN["para"].read(data_dir, "test").examples for t in e.texts]
    assert any('"the"' in t for t in texts)  # CSV-quoted field with doubled quotes inside


SST_HEADER = "\tid\tsentence\tsentiment\n"


def write(tmp_path, body: str, name="ids-sst-train.csv"):
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "body, line, reason",
    [
        (SST_HEADER + "0\ta1\tgood film\t3\n1\ta2\tno label here\n", 3, "expected 4 tab-separated fields, found 3"),
        (SST_HEADER + "0\ta1\tgood film\t7\n", 2, "bad sentiment '7': expected an integer 0-4"),
        (SST_HEADER + "0\ta1\tgood film\t3\n1\ta2\t  \t2\n", 3, "empty sentence"),
        ("\tid\ttext\tsentiment\n0\ta1\tgood\t3\n", 1, "wrong header: missing column(s) sentence"),
        (SST_HEADER + "0\ta1\tgood film\t3\n1\ta1\tbad film\t0\n", 3, "duplicate id 'a1'"),
        (SST_HEADER + "0\t\tgood film\t3\n", 2, "empty id"),
    ],
)
def test_malformed_rows_name_file_line_and_reason(tmp_path, body, line, reason):
    path = write(tmp_path, body)
    with pytest.raises(DataError) as err:
        BUILTIN["sst"].read(tmp_path, "train")
    assert str(err.value).startswith(f"{path}:{line}: {reason}")
    assert err.value.line == line


def test_bad_similarity_and_paraphrase_labels(tmp_path):
    write(tmp_path, "\tid\tsentence1\tsentence2\tsimilarity\n0\ta\tx\ty\t5.5\n", "sts-train.csv")
    with pytest.raises(DataError, match=r"sts-train.csv:2: bad similarity '5.5'"):
        BUILTIN["sts"].read(tmp_path, "train")
    write(tmp_path, "\tid\tsentence1\tsentence2\tis_duplicate\n0\ta\tx\ty\tyes\n", "quora-train.csv")
    with pytest.raises(DataError, match=r"quora-train.csv:2: bad is_duplicate 'yes'"):
        BUILTIN["para"].read(tmp_path, "train")


def test_skip_bad_rows_counts_them(tmp_path):
    write(tmp_path, SST_HEADER + "0\ta1\tgood\t3\n1\ta2\tbad\t9\n2\ta3\t\t1\n3\ta4\tfine\t0\n")
    result = BUILTIN["sst"].read(tmp_path, "train", skip_bad_rows=True)
    assert [e.id for e in result.examples] == ["a1", "a4"]
    assert result.skipped == 2
    assert result.skipped_rows == [(3, "bad sentiment '9': expected an integer 0-4"), (4, "empty sentence")]


def test_a_quoted_field_cannot_span_lines(tmp_path):
    """A row is one physical line, so a quote left open is an error on its own line and line
    numbers are physical lines."""
    path = write(tmp_path, SST_HEADER + '0\ta1\t"two\nlines"\t3\n1\ta2\tx\t4\n')
    with pytest.raises(DataError, match=f"{path}:2: unbalanced quote"):
        BUILTIN["sst"].read(tmp_path, "train")
    result = BUILTIN["sst"].read(tmp_path, "train", skip_bad_rows=True)
    assert [e.id for e in result.examples] == ["a2"]
    assert [line for line, _ in result.skipped_rows] == [2, 3]


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="ids-sst-dev.csv: file not found"):
        BUILTIN["sst"].read(tmp_path, "dev")
    with pytest.raises(DataError, match="does not exist"):
        resolve_data_dir(tmp_path / "nowhere")


def test_pad_batch():
    ids, mask = pad_batch([[101, 5, 102], [101, 102]], pad_id=0)
    assert ids.tolist() == [[101, 5, 102], [101, 102, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]


def test_length_buckets_cover_every_index_once_and_pad_little():
    rng = random.Random(0)
    lengths = [rng.randint(5, 120) for _ in range(1000)]
    batches = length_bucketed_batches(lengths, 32, random.Random(1))
    assert sorted(i for b in batches for i in b) == list(range(1000))
    padded = sum(32 * max(lengths[i] for i in b) for b in batches)
    shuffled = list(range(1000))
    random.Random(2).shuffle(shuffled)
    random_padded = sum(32 * max(lengths[i] for i in shuffled[j : j + 32]) for j in range(0, 1000, 32))
    assert padded < 0.75 * random_padded
    assert batches != length_bucketed_batches(lengths, 32, random.Random(2))  # still random
    assert torch.equal(torch.tensor(batches[0]), torch.tensor(length_bucketed_batches(lengths, 32, random.Random(1))[0]))
