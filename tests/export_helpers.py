"""Shared pieces of the export tests: tiny detectors, tiny configs, reference outputs.

`TinyMSDADetector` follows the model contract (edgedet.models.base) with two feature levels
and one MSDeformAttn layer, so the exporters are exercised even without a registered family.
Registered families are built from `tiny_overrides(name)`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
from torch import nn

from edgedet.config import ModelConfig
from edgedet.nn.ms_deform_attn import MSDeformAttn

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
BCCD_IMAGES = SHARED / "data" / "bccd" / "JPEGImages"


class TinyMSDADetector(nn.Module):
    """conv stem -> 2 levels -> queries attend with MSDA -> class / box heads (sigmoid family)."""

    score_activation = "sigmoid"

    def __init__(self, num_classes: int = 3, dim: int = 32, num_queries: int = 12, impl: str = "pytorch"):
        super().__init__()
        self.config = ModelConfig(name="tiny_msda", num_classes=num_classes, hidden_dim=dim, num_queries=num_queries,
                                  class_names=[f"c{i}" for i in range(num_classes)])
        self.stem = nn.Sequential(nn.Conv2d(3, dim, 3, 2, 1), nn.ReLU(), nn.Conv2d(dim, dim, 3, 2, 1))
        self.down = nn.Conv2d(dim, dim, 3, 2, 1)
        self.query = nn.Embedding(num_queries, dim)
        self.reference_points = nn.Linear(dim, 2)
        self.cross_attn = MSDeformAttn(dim, n_levels=2, n_heads=4, n_points=2, impl=impl)
        self.class_embed = nn.Linear(dim, num_classes)
        self.bbox_embed = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 4))
        with torch.no_grad():  # spread the sampling so the test sees non-trivial attention
            self.cross_attn.sampling_offsets.weight.normal_(0, 0.05)
            self.cross_attn.attention_weights.weight.normal_(0, 0.2)

    def forward(self, images, mask=None, targets=None) -> Dict:
        f1 = self.stem(images)
        f2 = self.down(f1)
        shapes = torch.as_tensor([f1.shape[-2:], f2.shape[-2:]], dtype=torch.long, device=images.device)
        tokens = torch.cat([f1.flatten(2), f2.flatten(2)], 2).transpose(1, 2)
        b = images.shape[0]
        q = self.query.weight.unsqueeze(0).expand(b, -1, -1)
        ref = self.reference_points(q).sigmoid()[:, :, None, :].expand(-1, -1, 2, -1)
        starts = torch.cat([shapes.new_zeros(1), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
        h = q + self.cross_attn(q, ref, tokens, shapes, starts)
        return {"pred_logits": self.class_embed(h), "pred_boxes": self.bbox_embed(h).sigmoid(), "aux_outputs": []}


class TinyUnexportable(nn.Module):
    """A contract-following wrapper whose forward uses an op ONNX cannot express."""

    score_activation = "softmax"

    def __init__(self):
        super().__init__()
        self.config = ModelConfig(name="tiny_bad", num_classes=2)
        self.proj = nn.Conv2d(3, 4, 1)

    def forward(self, images, mask=None, targets=None) -> Dict:
        feat = self.proj(images).flatten(2)  # [B, 4, HW]
        spectrum = torch.fft.rfft(feat, dim=-1).abs()[..., :5]  # no ONNX symbolic for aten::fft_rfft
        logits = spectrum.transpose(1, 2)[..., :3]
        return {"pred_logits": logits, "pred_boxes": torch.sigmoid(spectrum[:, :4].transpose(1, 2)), "aux_outputs": []}


def registered_models() -> List[str]:
    """Names in the model registry, or [] while `import edgedet` still fails (families landing)."""
    try:
        import edgedet
    except ImportError:
        return []
    return edgedet.list_models()


def tiny_overrides(name: str) -> Dict:
    """Small config for family `name`: resnet18, hidden 32, 1+1 layers, few queries.

    Only fields the family's config has are set, so new families need no change here.
    """
    from edgedet.models.factory import default_config

    cfg = default_config(name)
    wanted = {
        "backbone": "resnet18", "hidden_dim": 32, "num_queries": 10, "num_classes": 4, "aux_loss": False,
        "enc_layers": 1, "dec_layers": 1, "num_encoder_layers": 1, "num_decoder_layers": 1,
        "dim_feedforward": 64, "nheads": 4, "num_heads": 4, "n_heads": 4,
        "num_feature_levels": 3, "enc_n_points": 2, "dec_n_points": 2, "n_points": 2,
        "two_stage_num_proposals": 10, "num_select": 10, "dn_number": 0, "num_patterns": 0,
        "encoder_hidden_dim": 32, "encoder_dim_feedforward": 64, "encoder_nhead": 4, "num_denoising": 0,
    }
    if name == "rfdetr":  # a 2-layer ViT instead of DINOv2-S, 2 query groups
        wanted.update(vit_dims=[32, 2, 2], out_feature_indexes=[1, 2], group_detr=2, sa_nheads=4, ca_nheads=4)
    if name == "dfine":  # HGNetv2 backbones only
        wanted.update(backbone="B0", feat_channels=[32, 32], num_points=[2, 2])
    return {k: v for k, v in wanted.items() if hasattr(cfg, k)}


def build_tiny(name: str) -> nn.Module:
    if name == "tiny_msda":
        torch.manual_seed(0)
        return TinyMSDADetector().eval()
    import edgedet

    torch.manual_seed(0)
    return edgedet.create_model(name, **tiny_overrides(name)).eval()


def random_images(n: int, hw, seed: int = 0) -> np.ndarray:
    """[n, 3, H, W] float32 roughly like normalised images."""
    return np.random.default_rng(seed).standard_normal((n, 3, hw[0], hw[1])).astype(np.float32)


def torch_outputs(model: nn.Module, x: np.ndarray, postprocess: bool, top_k: int = 100):
    from converters.onnx.export import DeployModel

    with torch.no_grad():
        outs = DeployModel(model, postprocess=postprocess, top_k=top_k).eval()(torch.from_numpy(x))
    return [o.numpy() for o in outs]


def write_images(folder: Path, n: int = 4, seed: int = 0, size=(120, 160)) -> Path:
    """`n` deterministic JPEGs (coloured rectangles on noise) -> folder."""
    import cv2

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = rng.integers(0, 80, (size[0], size[1], 3), dtype=np.uint8)
        for _ in range(3):
            x0, y0 = int(rng.integers(0, size[1] - 30)), int(rng.integers(0, size[0] - 30))
            color = tuple(int(c) for c in rng.integers(100, 255, 3))
            cv2.rectangle(img, (x0, y0), (x0 + 25, y0 + 25), color, -1)
        cv2.imwrite(str(folder / f"img{i}.jpg"), img)
    return folder


def model_params(forms=("grid_sample", "gather")):
    """(model name, msda form) pairs: every MSDA form for models with deformable attention, "" otherwise."""
    from converters.onnx.msda_forms import has_msda

    out = []
    for name in ["tiny_msda"] + registered_models():
        out.extend((name, f) for f in (forms if has_msda(build_tiny(name)) else ("",)))
    return out


def probs(logits: np.ndarray, activation: str) -> np.ndarray:
    t = torch.from_numpy(np.asarray(logits, np.float32))
    return (t.sigmoid() if activation == "sigmoid" else t.softmax(-1)).numpy()


def assert_outputs_close(model: nn.Module, got, want, postprocess: bool, hw, atol: float = 1e-3) -> None:
    """Artifact outputs vs PyTorch: probabilities and boxes (normalised) within `atol`.

    Postprocessed top-K lists are compared as sets, so near-tied scores may swap ranks.
    """
    act = model.score_activation
    if not postprocess:
        np.testing.assert_allclose(probs(got[0], act), probs(want[0], act), atol=atol, rtol=0)
        np.testing.assert_allclose(got[1], want[1], atol=atol, rtol=0)
        return
    scale = np.array([hw[1], hw[0], hw[1], hw[0]], np.float32)
    g_lab, g_box, g_sc = got
    w_lab, w_box, w_sc = want
    assert g_lab.dtype == np.int64 and g_lab.shape == w_lab.shape and g_box.shape == w_box.shape
    for b in range(len(g_sc)):
        np.testing.assert_allclose(np.sort(g_sc[b]), np.sort(w_sc[b]), atol=atol, rtol=0)
        for i in range(len(g_sc[b])):
            close = (
                (w_lab[b] == g_lab[b, i])
                & (np.abs(w_sc[b] - g_sc[b, i]) <= atol)
                & (np.abs(w_box[b] / scale - g_box[b, i] / scale).max(-1) <= atol)
            )
            assert close.any(), f"detection {i} (label {g_lab[b, i]}, score {g_sc[b, i]:.4f}) has no PyTorch counterpart"


def feeds(input_names, x: np.ndarray) -> Dict[str, np.ndarray]:
    """Inputs of an exported graph for preprocessed images `x` [B, 3, H, W] that fill the whole input: the
    images, plus `valid_hw` (every image's region = the whole input) where the graph takes one."""
    out = {"images": x}
    if "valid_hw" in set(input_names):
        out["valid_hw"] = np.tile(np.array([x.shape[2:]], np.int32), (x.shape[0], 1))
    return out


def graph_inputs(obj) -> List[str]:
    """Input names of an ORT session, an OpenVINO compiled model or a runtime Detector/Backend."""
    if hasattr(obj, "get_inputs"):
        return [i.name for i in obj.get_inputs()]
    if hasattr(obj, "input_specs"):
        return [s.name for s in obj.input_specs]
    if hasattr(obj, "backend"):
        return [s.name for s in obj.backend.input_specs]
    return [n for port in obj.inputs for n in port.get_names()]
