"""WordPiece tokenisation from a checkpoint's vocab.txt, through the `tokenizers` library.

Lower-cases and strips accents as bert-base-uncased does. Sequences are encoded once, without
padding; batches are padded later to their own longest sequence (see `data.pad_batch`).
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import BertWordPieceTokenizer


class WordPieceTokenizer:
    def __init__(self, vocab_file: str | Path, lowercase: bool = True):
        self.vocab_file, self.lowercase = Path(vocab_file), lowercase
        if not self.vocab_file.exists():
            raise FileNotFoundError(f"{self.vocab_file}: vocab file not found")
        self._tok = BertWordPieceTokenizer(str(self.vocab_file), lowercase=lowercase)
        self.pad_id = self._tok.token_to_id("[PAD]")
        self.cls_id = self._tok.token_to_id("[CLS]")
        self.sep_id = self._tok.token_to_id("[SEP]")
        self.mask_id = self._tok.token_to_id("[MASK]")
        self.vocab_size = self._tok.get_vocab_size()

    def _truncate(self, max_length: int) -> None:
        self._tok.enable_truncation(max_length=max_length, strategy="longest_first")

    def encode(self, texts: list[str], max_length: int = 128) -> list[list[int]]:
        """`[CLS] text [SEP]` ids for each text, truncated to max_length."""
        self._truncate(max_length)
        return [e.ids for e in self._tok.encode_batch(list(texts))]

    def encode_windows(self, texts: list[str], max_length: int = 128, stride: int = 0) -> list[list[list[int]]]:
        """Each text as windows `[CLS] slice [SEP]` of at most max_length ids, consecutive slices
        sharing `stride` tokens (the `tokenizers` overflow convention); one window, equal to
        `encode`'s, for a text that fits."""
        self._tok.enable_truncation(max_length=max_length, stride=stride, strategy="longest_first")
        return [[e.ids] + [o.ids for o in e.overflowing] for e in self._tok.encode_batch(list(texts))]

    def encode_pairs(
        self, first: list[str], second: list[str], max_length: int = 128
    ) -> list[tuple[list[int], list[int]]]:
        """`[CLS] a [SEP] b [SEP]` ids and token type ids (0 for a, 1 for b) for each pair."""
        self._truncate(max_length)
        encodings = self._tok.encode_batch(list(zip(first, second)))
        return [(e.ids, e.type_ids) for e in encodings]

    def tokens(self, text: str) -> list[str]:
        self._tok.no_truncation()
        return self._tok.encode(text, add_special_tokens=False).tokens

    def save(self, path: str | Path) -> None:
        """The tokenizer as a `tokenizers` JSON file (a Hugging Face `tokenizer.json`), untruncated."""
        self._tok.no_truncation()
        self._tok.save(str(path))
