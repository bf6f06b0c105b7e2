"""Text prompt encoders: class names or phrases -> prompt embeddings [K, dim].

Every encoder implements `TextEncoder.encode(texts) -> [K, dim]` (differentiable in its own
trainable parameters) and is picked by name from `TEXT_ENCODERS`:

- `minilm`: the pretrained all-MiniLM-L6-v2 sentence encoder (frozen; `edgedet.nn.minilm`)
  followed by a trainable linear projection. Frozen sentence features are cached per string.
- `token`:  a light trainable encoder: each lower-cased word hashes (CRC32) into a fixed
  vocabulary of embeddings, averaged, then projected. No pretrained knowledge; for tests and
  closed vocabularies.
"""
from __future__ import annotations

import re
import zlib
from typing import Dict, List, Sequence

import torch
from torch import Tensor, nn

from edgedet.registry import Registry

TEXT_ENCODERS = Registry("text encoder")
_WORD = re.compile(r"[a-z0-9]+")


class TextEncoder(nn.Module):
    """Base class: `encode(texts) -> [K, dim]` on the module's device."""

    dim: int

    def encode(self, texts: Sequence[str]) -> Tensor:
        raise NotImplementedError

    def forward(self, texts: Sequence[str]) -> Tensor:
        return self.encode(texts)

    @staticmethod
    def check_texts(texts: Sequence[str]) -> List[str]:
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of strings, not one string; wrap it: encode([text])")
        texts = list(texts)
        bad = [t for t in texts if not isinstance(t, str) or not t.strip()]
        if bad:
            raise ValueError(f"text prompts must be non-empty strings, got {bad[0]!r}")
        return texts


@TEXT_ENCODERS.register("token")
class TokenTextEncoder(TextEncoder):
    """Hashed bag of words: word -> bucket crc32(word) % vocab_size -> embedding; mean; linear."""

    def __init__(self, dim: int, vocab_size: int = 4096, embed_dim: int = 64):
        super().__init__()
        self.dim, self.vocab_size = dim, vocab_size
        self.embed = nn.EmbeddingBag(vocab_size, embed_dim, mode="mean")
        self.proj = nn.Linear(embed_dim, dim)
        nn.init.normal_(self.embed.weight, std=1.0)

    def token_ids(self, text: str) -> List[int]:
        words = _WORD.findall(text.lower()) or [text.strip().lower()]
        return [zlib.crc32(w.encode()) % self.vocab_size for w in words]

    def encode(self, texts: Sequence[str]) -> Tensor:
        texts = self.check_texts(texts)
        device = self.proj.weight.device
        if not texts:
            return torch.zeros(0, self.dim, device=device)
        ids = [self.token_ids(t) for t in texts]
        flat = torch.tensor([i for row in ids for i in row], dtype=torch.int64, device=device)
        offsets = torch.tensor([0] + [len(r) for r in ids[:-1]], dtype=torch.int64, device=device).cumsum(0)
        return self.proj(self.embed(flat, offsets))


@TEXT_ENCODERS.register("minilm")
class MiniLMTextEncoder(TextEncoder):
    """Frozen all-MiniLM-L6-v2 sentence features [K, 384] -> trainable Linear -> [K, dim].

    The MiniLM weights are not part of this module's state_dict (they come from the installed
    package), so checkpoints stay small; only the projection is saved. They are loaded at the first
    `encode`, so a model can be built (and run on visual prompts) without the package.
    """

    FEATURE_DIM = 384  # all-MiniLM-L6-v2's sentence embedding size

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.proj = nn.Linear(self.FEATURE_DIM, dim)
        self._features: Dict[str, Tensor] = {}

    @property
    def backbone(self):
        """The frozen MiniLM, shared by every encoder in the process (not a submodule: never saved)."""
        from edgedet.nn.minilm import load_minilm

        return load_minilm()

    def sentence_features(self, texts: Sequence[str]) -> Tensor:
        """Frozen MiniLM embeddings [K, 384] (unit length), computed once per distinct string."""
        missing = sorted({t for t in texts if t not in self._features})
        if missing:
            for text, feat in zip(missing, self.backbone.encode(missing)):
                self._features[text] = feat
        return torch.stack([self._features[t] for t in texts]).to(self.proj.weight.device)

    def encode(self, texts: Sequence[str]) -> Tensor:
        texts = self.check_texts(texts)
        if not texts:
            return torch.zeros(0, self.dim, device=self.proj.weight.device)
        return self.proj(self.sentence_features(texts))


def build_text_encoder(name: str, dim: int) -> TextEncoder:
    """Text encoder `name` ("token" | "minilm") with output size `dim`."""
    return TEXT_ENCODERS.get(name)(dim)


__all__ = ["TEXT_ENCODERS", "TextEncoder", "TokenTextEncoder", "MiniLMTextEncoder", "build_text_encoder"]
