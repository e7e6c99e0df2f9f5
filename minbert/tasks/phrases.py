"""Phrase-level sentiment supervision from the SST training trees (Socher et al. 2013).

Every node of a PTB tree carries a 0-4 label; the phrase is the node's leaves joined by
spaces, which matches the tokenisation of the sentence files. Only the training trees are
read: the dev trees would leak dev labels and there are no test trees here.
"""

from __future__ import annotations

import re
from pathlib import Path

from minbert.tasks.data import DataError, Example


def parse_tree(line: str) -> tuple[int, list]:
    """'(3 (2 a) (4 b))' -> (3, [(2, 'a'), (4, 'b')]); a leaf is (label, word)."""
    # Split on ASCII spaces only: a few words hold a no-break space ("8\xa01\\/2").
    tokens = re.findall(r"[()]|[^ ()\n]+", line)
    pos = 0

    def node():
        nonlocal pos
        if tokens[pos] != "(":
            raise ValueError(f"expected '(' at token {pos}, found {tokens[pos]!r}")
        label = int(tokens[pos + 1])
        if not 0 <= label <= 4:
            raise ValueError(f"label {label} is not 0-4")
        pos += 2
        if tokens[pos] != "(":  # a leaf: (label word)
            word = tokens[pos]
            pos += 2  # word and ')'
            return label, word
        children = []
        while tokens[pos] == "(":
            children.append(node())
        pos += 1  # ')'
        return label, children

    tree = node()
    if pos != len(tokens):
        raise ValueError("text after the end of the tree")
    return tree


def phrases(tree: tuple[int, list | str]) -> list[tuple[str, int]]:
    """(text, label) for every node, root first (pre-order)."""
    out: list[tuple[str, int]] = []

    def visit(node) -> list[str]:
        label, body = node
        index = len(out)
        out.append(("", label))  # placeholder keeps pre-order
        words = [body] if isinstance(body, str) else [w for child in body for w in visit(child)]
        out[index] = (" ".join(words), label)
        return words

    visit(tree)
    return out


def phrase_examples(trees_file: Path, sentences: list[Example], min_words: int = 1) -> list[Example]:
    """Distinct labelled phrases of the training trees, minus the full sentences already in
    `sentences` (their labels come from the sentence file), keeping those of at least
    `min_words` words. Ids (`phrase-N`) number all distinct phrases, kept or not, so a phrase
    has the same id whatever `min_words` is (soft labels are matched by id)."""
    seen = {e.texts[0] for e in sentences}
    out: list[Example] = []
    count = 0
    with Path(trees_file).open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            try:
                nodes = phrases(parse_tree(line))
            except (ValueError, IndexError) as e:
                raise DataError(trees_file, line_no, f"bad tree: {e}") from None
            for text, label in nodes:
                if text not in seen:
                    seen.add(text)
                    if text.count(" ") + 1 >= min_words:
                        out.append(Example(f"phrase-{count}", (text,), label))
                    count += 1
    return out
