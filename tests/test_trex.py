"""Prompted open-set detector (`trex`): prompt encoding, alignment, training losses, export, runtime.

Tiny configs (resnet18, hidden 64, 1 encoder + 1 decoder layer, K_max 8) on 96x96 inputs.
"""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from edgedet.models import create_model
from edgedet.models.trex import TRex, TRexConfig
from edgedet.models.trex_prompts import sample_prompts
from edgedet.nn.prompt_encoder import MASKED_LOGIT, PromptAlignment, average_prompts
from edgedet.nn.text_encoder import TokenTextEncoder

SIZE = 96
TINY = dict(backbone="resnet18", hidden_dim=64, nheads=4, enc_layers=1, dec_layers=1, dim_feedforward=64, num_queries=12,
            enc_n_points=2, dec_n_points=2, dn_number=6, max_prompts=8, max_prompt_boxes=3, prompt_dim=32,
            text_encoder="token", class_names=["circle", "square", "triangle", "star"])


def tiny_model(**overrides) -> TRex:
    torch.manual_seed(0)
    model = TRex(TRexConfig(**{**TINY, **overrides})).eval()
    with torch.no_grad():  # spread deformable sampling so prompts at different boxes differ clearly
        for m in model.modules():
            if hasattr(m, "sampling_offsets"):
                m.sampling_offsets.weight.normal_(0, 0.05)
                m.attention_weights.weight.normal_(0, 0.2)
    return model


@pytest.fixture(scope="module")
def model() -> TRex:
    return tiny_model()


def random_prompts(seed: int = 0, batch: int = 2):
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(batch, 8, 3, 2, generator=g) * 0.6 + 0.2
    sizes = torch.rand(batch, 8, 3, 2, generator=g) * 0.2 + 0.05
    valid = torch.rand(batch, 8, 3, generator=g) > 0.3
    valid[:, :, 0] = True
    return torch.cat([centres, sizes], -1), valid


def test_registered_and_config_checked():
    model = create_model("trex", **TINY)
    assert isinstance(model, TRex) and model.config.max_prompts == 8
    with pytest.raises(Exception, match="text_encoder"):
        create_model("trex", **{**TINY, "text_encoder": "bert"})


@torch.no_grad()
def test_prompt_encoder_shapes_and_invalid_boxes_do_not_leak(model):
    images = torch.randn(2, 3, SIZE, SIZE)
    boxes, valid = random_prompts()
    valid[1, 5] = False  # a class with no box at all
    emb, class_valid = model.encode_visual_prompts(images, boxes, valid)
    assert emb.shape == (2, 8, 32) and class_valid.shape == (2, 8)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2, 8), atol=1e-5)
    assert class_valid[1, 5].item() is False and class_valid[0].all()
    # Garbage in invalid slots and a different box set for class 0 leave every other valid class unchanged.
    boxes2 = boxes.clone()
    boxes2[~valid] = torch.rand(int((~valid).sum()), 4) * 5 - 2
    boxes2[:, 0, 0] = torch.tensor([0.3, 0.3, 0.1, 0.1])
    emb2, _ = model.encode_visual_prompts(images, boxes2, valid)
    assert torch.allclose(emb[:, 1:][class_valid[:, 1:]], emb2[:, 1:][class_valid[:, 1:]], atol=1e-6)
    assert (emb[:, 0] - emb2[:, 0]).abs().max() > 1e-4  # the prompt boxes do matter
    # A point is a zero-size box with its own content embedding: it differs from a box at the same centre.
    point = boxes.clone()
    point[0, 1, :, 2:] = 0
    emb3, _ = model.encode_visual_prompts(images, point, valid)
    assert (emb3[0, 1] - emb[0, 1]).abs().max() > 1e-4


@torch.no_grad()
def test_masked_prompts_get_no_scores_and_do_not_change_valid_ones(model):
    images = torch.randn(1, 3, SIZE, SIZE)
    prompts = F.normalize(torch.randn(1, 8, 32), dim=-1)
    mask = torch.tensor([[True, True, False, True, False, False, False, False]])
    out = model(images, prompts=prompts, prompt_mask=mask)
    assert out["pred_logits"].shape == (1, 12, 8)
    assert (out["pred_logits"][..., ~mask[0]] == MASKED_LOGIT).all()
    assert (out["pred_logits"][..., mask[0]] > MASKED_LOGIT / 2).all()
    other = prompts.clone()
    other[:, ~mask[0]] = F.normalize(torch.randn(1, int((~mask).sum()), 32), dim=-1)
    out2 = model(images, prompts=other, prompt_mask=mask)
    assert torch.equal(out["pred_logits"], out2["pred_logits"]) and torch.equal(out["pred_boxes"], out2["pred_boxes"])


@torch.no_grad()
def test_multi_image_prompts_are_averaged(model):
    images = torch.randn(2, 3, SIZE, SIZE)
    boxes, valid = random_prompts(1)
    valid[1, 2] = False  # class 2 only on image 0
    emb, class_valid = model.encode_visual_prompts(images, boxes, valid)
    mean, mean_valid = average_prompts(emb, class_valid)
    assert torch.allclose(mean[0], F.normalize(emb[0, 0] + emb[1, 0], dim=-1), atol=1e-6)
    assert torch.allclose(mean[2], emb[0, 2], atol=1e-6) and mean_valid.all()
    target = torch.randn(1, 3, SIZE, SIZE)
    one_shot = model.detect_with_visual_prompts(target, images, boxes, valid)
    cached = model(target, prompts=mean[None], prompt_mask=mean_valid[None])
    assert torch.equal(one_shot["pred_logits"], cached["pred_logits"])


def test_alignment_scores_highest_for_the_equal_prompt():
    torch.manual_seed(0)
    head = PromptAlignment(64, 32)
    prompts = F.normalize(torch.randn(1, 6, 32), dim=-1)
    queries = prompts[:, [3, 0, 5]] * 2.0  # scale does not matter: cosine similarity
    logits = head.scores(queries, prompts)
    assert logits.argmax(-1).tolist() == [[3, 0, 5]]
    assert torch.allclose(logits[0, 0, 3], head.log_scale.exp() + head.bias)
    masked = head.scores(queries, prompts, torch.tensor([[True, True, True, False, True, True]]))
    assert (masked[..., 3] == MASKED_LOGIT).all() and masked[0, 1].argmax() == 0


def test_token_text_encoder_hashes_words():
    enc = TokenTextEncoder(16)
    a, b, c = enc.encode(["Red circle", "red  CIRCLE!", "square"])
    assert torch.allclose(a, b) and not torch.allclose(a, c)
    with pytest.raises(TypeError, match="list of strings"):
        enc.encode("circle")


def test_negative_prompts_have_empty_targets_and_the_loss_is_finite():
    model = tiny_model().train()
    images = torch.randn(2, 3, SIZE, SIZE)
    targets = [{"labels": torch.tensor([0, 0, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2],
                                                                          [0.5, 0.3, 0.1, 0.2]])},
               {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]
    memory = model.encode_images(images)
    prompts, mask, slot_targets, align = sample_prompts(model, memory, targets, [0, 1, 2, 3], TINY["class_names"],
                                                        visual_prob=1.0, rng=random.Random(3))
    assert prompts.shape == (2, 8, 32) and mask.dtype == torch.bool
    # Image 0: its two classes are prompted; targets point at those slots only; other valid slots are negatives.
    labels0 = slot_targets[0]["labels"]
    assert len(labels0) == 3 and mask[0, labels0].all() and len(set(labels0.tolist())) == 2
    assert labels0[0] == labels0[1] != labels0[2]
    # Image 1 has no object: every prompt is negative and the targets are empty.
    assert slot_targets[1]["labels"].numel() == 0
    # The visual prompts of image 0's classes are exemplars of those classes.
    assert sorted(align["labels"].tolist()) == [0, 2] and align["text"].shape == (4, 32)
    out = model(images, None, slot_targets, prompts=prompts, prompt_mask=mask, memory=memory)
    out["prompt_align"] = align
    criterion = model.build_criterion()
    losses = criterion(out, slot_targets)
    assert {"loss_ce", "loss_bbox", "loss_giou", "loss_ce_dn", "loss_ce_interm", "loss_align"} <= set(losses)
    total = criterion.total_loss(losses)
    assert torch.isfinite(total)
    total.backward()
    assert model.prompt_encoder.out_proj.weight.grad.abs().sum() > 0
    assert model.text_encoder.proj.weight.grad.abs().sum() > 0
    assert model.dn_content.weight.grad.abs().sum() > 0


def test_prompt_labels_must_index_prompt_slots():
    model = tiny_model()
    criterion = model.build_criterion()
    out = {"pred_logits": torch.zeros(1, 12, 8), "pred_boxes": torch.full((1, 12, 4), 0.5)}
    with pytest.raises(ValueError, match="prompt slot"):
        criterion(out, [{"labels": torch.tensor([9]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}])


def _engine_cfg(out, **train_kw):
    from edgedet.config import DataConfig, ExperimentConfig, TrainConfig

    tc = dict(output_dir=str(out), epochs=2, batch_size=2, lr=5e-4, max_iters_per_epoch=1, warmup_iters=1,
              eval_every=1, seed=0, ema=True, ema_decay=0.9, scheduler="step", lr_drop_epoch=1)
    tc.update(train_kw)
    model = TRexConfig(**{**TINY, "class_names": [], "prompt_visual_prob": 0.5, "prompt_classes": [0, 1]})
    return ExperimentConfig(model=model, data=DataConfig(format="synthetic"), train=TrainConfig(**tc))


def _engine_data():
    from _tiny_detector import TinyShapes

    return TinyShapes(2, size=64), TinyShapes(1, size=64, seed=1)


def test_trex_trains_through_the_engine(tmp_path):
    """Sampled visual/text prompt tasks inside the common loop: all losses, EMA, checkpoint, mAP."""
    from edgedet.engine.checkpoint import load_model
    from edgedet.engine.plots import read_metrics
    from edgedet.engine.trainer import train

    last = train(_engine_cfg(tmp_path, epochs=1), progress=False, datasets=_engine_data())
    row = read_metrics(tmp_path / "metrics.jsonl")[-1]
    assert "val_mAP" in row and {"train_loss_align", "train_loss_ce_dn", "train_loss_ce_interm"} <= set(row)
    model = load_model(last, prefer_ema=False)
    assert model.config.class_names == ["red", "green", "blue"] and model.config.num_classes == 3
    with torch.no_grad():  # evaluation / export detect the class names: default prompts = their text prompts
        similarity = model.default_prompts @ model.encode_text_prompts(model.config.class_names).t()
        assert model(torch.randn(1, 3, 64, 64))["pred_logits"].shape == (1, TINY["num_queries"], 3)
    assert torch.equal(similarity.argmax(1), torch.arange(3)) and similarity.diagonal().min() > 0.99


@pytest.mark.slow
def test_trex_engine_training_resumes_exactly(tmp_path):
    from edgedet.engine.checkpoint import load_checkpoint
    from edgedet.engine.trainer import train

    full = train(_engine_cfg(tmp_path / "full"), progress=False, datasets=_engine_data())
    part = train(_engine_cfg(tmp_path / "part", epochs=1), progress=False, datasets=_engine_data())
    resumed = train(_engine_cfg(tmp_path / "part"), resume=str(part), progress=False, datasets=_engine_data())
    a, b = load_checkpoint(full), load_checkpoint(resumed)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_one_shot_prompts_use_the_largest_box_of_the_first_image_holding_each_class(tmp_path, model):
    from edgedet.config import DataConfig
    from edgedet.data import build_dataset
    from edgedet.models.trex_prompts import find_exemplars, one_shot_prompts

    cfg = DataConfig(format="synthetic", root=str(tmp_path), synthetic_train_images=6, synthetic_image_size=64,
                     synthetic_num_classes=3, scales=[64], max_size=64, val_size=64, hflip=0.0)
    dataset = build_dataset(cfg, "train")
    classes = sorted({int(c) for rec in dataset.records for c in rec.labels})
    shots = find_exemplars(dataset, classes)
    for c, (i, j) in shots.items():
        assert all(c not in rec.labels for rec in dataset.records[:i])
        rec = dataset.records[i]
        areas = [(b[2] - b[0]) * (b[3] - b[1]) for b, label in zip(rec.boxes_xyxy, rec.labels) if label == c]
        b = rec.boxes_xyxy[j]
        assert rec.labels[j] == c and (b[2] - b[0]) * (b[3] - b[1]) == max(areas)
    prompts = one_shot_prompts(model, dataset, classes)
    assert prompts.shape == (len(classes), model.config.prompt_dim)
    i, j = shots[classes[0]]
    image, target = dataset[i]
    alone, _ = model.encode_visual_prompts(image[None], target["boxes"][j].view(1, 1, 1, 4))
    assert torch.allclose(prompts[0], alone[0, 0], atol=1e-6)
    with pytest.raises(RuntimeError, match="no image holds"):
        find_exemplars(dataset, [99])
