"""BERT uncased WordPiece tokenization (as all-MiniLM-L6-v2 uses it), torch-free.

Clean text (drop control characters, space out CJK characters), lower-case, strip accents, split
on whitespace and punctuation, then greedy longest-match WordPiece over `vocab.txt`, wrapped in
[CLS] ... [SEP]. Shared by training (`edgedet.nn.minilm`) and the runtime's text prompts, so
both produce the same token ids.
"""
from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

MAX_SEQ_LENGTH = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    # BERT treats every non-alphanumeric ASCII symbol as punctuation, plus Unicode P* categories.
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
            or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


class WordPieceTokenizer:
    """BERT uncased tokenization: clean, lowercase, strip accents, split punctuation, greedy WordPiece."""

    def __init__(self, vocab_file: Path, max_chars_per_word: int = 100):
        self.vocab_file = Path(vocab_file)
        if not self.vocab_file.is_file():
            raise FileNotFoundError(f"WordPiece vocabulary not found: {self.vocab_file}")
        tokens = self.vocab_file.read_text(encoding="utf-8").split("\n")
        self.vocab: Dict[str, int] = {t: i for i, t in enumerate(tokens) if t}
        self.max_chars_per_word = max_chars_per_word
        self.cls_id, self.sep_id, self.unk_id = self.vocab["[CLS]"], self.vocab["[SEP]"], self.vocab["[UNK]"]

    def basic_tokens(self, text: str) -> List[str]:
        chars = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or (unicodedata.category(ch).startswith("C") and ch not in "\t\n\r"):
                continue
            if ch.isspace():
                chars.append(" ")
            elif _is_cjk(cp):
                chars.append(f" {ch} ")
            else:
                chars.append(ch)
        text = unicodedata.normalize("NFD", "".join(chars).lower())
        text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")
        out: List[str] = []
        for word in text.split():
            current = ""
            for ch in word:
                if _is_punctuation(ch):
                    if current:
                        out.append(current)
                    out.append(ch)
                    current = ""
                else:
                    current += ch
            if current:
                out.append(current)
        return out

    def wordpiece(self, word: str) -> List[int]:
        if len(word) > self.max_chars_per_word:
            return [self.unk_id]
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            else:
                return [self.unk_id]  # no piece matches: the whole word is unknown
            start = end
        return ids

    def encode(self, text: str, max_length: int = MAX_SEQ_LENGTH) -> List[int]:
        """One text -> [CLS] ids [SEP], truncated to `max_length` ids."""
        ids = [i for w in self.basic_tokens(text) for i in self.wordpiece(w)]
        return [self.cls_id] + ids[: max_length - 2] + [self.sep_id]

    def batch(self, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """-> input_ids [K, T] int64 (0-padded), attention_mask [K, T] int64 (1 at real tokens)."""
        seqs = [self.encode(t) for t in texts]
        length = max(len(s) for s in seqs)
        ids = np.zeros((len(seqs), length), np.int64)
        mask = np.zeros((len(seqs), length), np.int64)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = s
            mask[i, : len(s)] = 1
        return ids, mask


__all__ = ["WordPieceTokenizer", "MAX_SEQ_LENGTH"]
