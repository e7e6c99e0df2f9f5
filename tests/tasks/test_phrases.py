import pytest

from minbert.tasks.data import DataError, Example
from minbert.tasks.phrases import parse_tree, phrase_examples, phrases


def test_phrase_spans_and_labels():
    tree = parse_tree("(3 (2 The) (4 (3 very) (4 good) (2 film)))\n")
    assert phrases(tree) == [
        ("The very good film", 3), ("The", 2), ("very good film", 4), ("very", 3), ("good", 4), ("film", 2),
    ]  # fmt: skip


def test_words_with_no_break_space_stay_whole():
    assert phrases(parse_tree("(2 (2 8\xa01\\/2) (2 .))")) == [("8\xa01\\/2 .", 2), ("8\xa01\\/2", 2), (".", 2)]


def test_phrase_examples_skip_known_sentences_and_duplicates(tmp_path):
    f = tmp_path / "trees.txt"
    f.write_text("(3 (2 a) (4 (3 b) (2 a)))\n(1 (2 a) (0 c))\n")
    got = phrase_examples(f, [Example("s1", ("a b a",), 3)])
    assert [(e.texts[0], e.label) for e in got] == [("a", 2), ("b a", 4), ("b", 3), ("a c", 1), ("c", 0)]


def test_bad_tree_names_file_and_line(tmp_path):
    f = tmp_path / "trees.txt"
    f.write_text("(3 (2 a) (2 b))\n(9 (2 a))\n")
    with pytest.raises(DataError, match=r"trees.txt:2: bad tree: label 9"):
        phrase_examples(f, [])


def test_shared_training_trees(data_dir):
    from minbert.tasks import BUILTIN

    sentences = BUILTIN["sst"].read(data_dir, "train").examples
    extra = phrase_examples(data_dir / "sst-trees-train.txt", sentences)
    assert len(extra) > 100_000
    assert {e.label for e in extra} == {0, 1, 2, 3, 4}
    assert not {e.texts[0] for e in extra} & {e.texts[0] for e in sentences}


def test_train_cap_counts_phrases(data_dir):
    """data.max_train_examples caps SST training examples with the phrases included."""
    from minbert.config import load_config
    from minbert.runs import read_all

    cfg = load_config(None, [f"data.dir={data_dir}", "data.sst_phrases=true", "data.max_train_examples=500"])
    sst = read_all(cfg, {"train": ("sst",)})["train"]["sst"]
    assert len(sst) == 500
    assert any(e.id.startswith("phrase-") for e in sst) and not all(e.id.startswith("phrase-") for e in sst)


def test_min_words_keeps_ids(tmp_path):
    """phrase_min_words drops short phrases; a kept phrase keeps the id it has without the filter."""
    f = tmp_path / "trees.txt"
    f.write_text("(3 (2 a) (4 (3 b) (2 a)))\n(1 (2 a) (0 c))\n")
    every = {e.texts[0]: e.id for e in phrase_examples(f, [])}
    long = phrase_examples(f, [], min_words=2)
    assert [e.texts[0] for e in long] == ["a b a", "b a", "a c"]
    assert all(every[e.texts[0]] == e.id for e in long)


def test_phrases_as_their_own_training_task(small_data_dir, tmp_path):
    """sst_phrases: the phrases alone, read as a train-only task that uses the sst spec."""
    from minbert.config import load_config
    from minbert.tasks import BUILTIN, head_task
    from minbert.runs import needed_splits, read_all

    cfg = load_config(None, [f"data.dir={small_data_dir}", "data.phrase_min_words=3",
                             "train.phases=[{tasks: [sst_phrases], epochs: 1}, {tasks: [sst, para], epochs: 1}]"])  # fmt: skip
    assert needed_splits(cfg, test=False)["train"] == ("sst", "para", "sst_phrases")
    train = read_all(cfg, {"train": ("sst_phrases", "sst")})["train"]
    assert train["sst_phrases"] and all(e.id.startswith("phrase-") for e in train["sst_phrases"])
    assert all(len(e.texts[0].split(" ")) >= 3 for e in train["sst_phrases"])
    assert not any(e.id.startswith("phrase-") for e in train["sst"])
    assert BUILTIN[head_task("sst_phrases")] is BUILTIN["sst"]
