"""Co-DETR: assigners, sampler, RoIAlign, NMS, positive queries, attention mask, training
forward/backward, and that inference (and export) is exactly the base detector's.

Tiny configs (resnet18, hidden 64, 1 encoder + 1 decoder layer, 96x96 images) keep it fast.
"""
from __future__ import annotations

import statistics

import pytest
import torch
import yaml

from edgedet.config import ConfigError, model_config_from_dict, to_dict
from edgedet.models import create_model, list_models
from edgedet.models.co_detr import CoDINO, parse_aux_heads
from edgedet.models.co_detr_adapters import CO_ADAPTERS
from edgedet.models.deformable_detr import DeformableDETR
from edgedet.models.dino import DINO
from edgedet.nn.box_ops import box_cxcywh_to_xyxy
from edgedet.nn.co_heads.anchors import cell_anchors, grid_anchors
from edgedet.nn.co_heads.assigners import IGNORED, NEGATIVE, atss_assign, max_iou_assign, random_sample
from edgedet.nn.co_heads.atss_head import ATSSHead, ATSSHeadConfig, centerness_targets
from edgedet.nn.co_heads.box_coding import batched_nms, decode_deltas, encode_deltas, nms
from edgedet.nn.co_heads.common import Positives
from edgedet.nn.co_heads.positive_queries import PositiveQueryBuilder, fixed_assignment, group_attention_mask
from edgedet.nn.co_heads.pyramid import MultiScaleDownsamplePyramid, SimpleFeaturePyramid, image_sizes, split_levels
from edgedet.nn.co_heads.roi_align import multilevel_roi_align, roi_align, roi_levels
from edgedet.registry import UnknownNameError

RCNN_TINY = {"type": "rcnn", "fc_dim": 64, "anchor_scales": [4.0], "pre_nms_top_k": 100, "post_nms_top_k": 50,
             "rpn_num_samples": 64, "roi_num_samples": 64, "roi_size": 4}
HEADS = [{"type": "atss", "max_pos_queries": 12}, RCNN_TINY]
COMMON = dict(backbone="resnet18", hidden_dim=64, nheads=4, enc_layers=1, dec_layers=1, dim_feedforward=64,
              enc_n_points=2, dec_n_points=2, num_classes=4, aux_heads=HEADS)
TINY = {
    "co_dino": dict(COMMON, num_queries=12, dn_number=6),
    "co_deformable_detr": dict(COMMON, num_queries=20, with_box_refine=True, two_stage=True),
}


def batch():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 96, 96)
    mask = torch.zeros(2, 96, 96, dtype=torch.bool)
    mask[1, :, 80:] = True  # second image is 96x80, padded on the right
    targets = [
        {"labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.3], [0.3, 0.3, 0.2, 0.4]])},
        {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.6, 0.5, 0.4, 0.3]])},
    ]
    return images, mask, targets


@pytest.fixture(scope="module", params=["co_dino", "co_deformable_detr"])
def co_model(request):
    torch.manual_seed(0)
    return create_model(request.param, **TINY[request.param])


# ---------------------------------------------------------------- assigners and sampler


def test_atss_threshold_and_centre_rule_by_hand():
    # Level 0 and level 1 anchors (3 each), two GTs, top-2 closest anchors per level.
    anchors = torch.tensor([
        [0, 0, 30, 30], [105, 105, 125, 125], [60, 60, 70, 70],        # level 0: a0, a1, a2
        [90, 90, 130, 130], [20, 20, 40, 40], [200, 200, 240, 240],    # level 1: b0, b1, b2
    ], dtype=torch.float32)
    gts = torch.tensor([[0, 0, 10, 10], [100, 100, 140, 140]], dtype=torch.float32)
    gt_index, iou = atss_assign(anchors, [3, 3], gts, topk=2)
    # GT0 (centre 5,5): candidates a0, a2 (level 0) and b1, b0 (level 1), IoUs 1/9, 0, 0, 0.
    thr0 = statistics.mean([1 / 9, 0, 0, 0]) + statistics.stdev([1 / 9, 0, 0, 0])
    assert 1 / 9 >= thr0  # a0 clears the IoU threshold, but its centre (15, 15) is outside GT0
    # GT1 (centre 120,120): candidates a1, a2 and b0, b2, IoUs 1/4, 0, 9/23, 0.
    thr1 = statistics.mean([0.25, 0, 9 / 23, 0]) + statistics.stdev([0.25, 0, 9 / 23, 0])
    assert 0.25 < thr1 <= 9 / 23  # only b0 clears it
    assert gt_index.tolist() == [NEGATIVE, NEGATIVE, NEGATIVE, 1, NEGATIVE, NEGATIVE]
    assert iou[3].item() == pytest.approx(9 / 23)


def test_atss_picks_highest_iou_gt_and_handles_no_gt():
    anchors = torch.tensor([[0, 0, 20, 20], [10, 10, 30, 30]], dtype=torch.float32)
    gts = torch.tensor([[0, 0, 20, 20], [1, 1, 21, 21]], dtype=torch.float32)
    gt_index, _ = atss_assign(anchors, [2], gts, topk=1)
    assert gt_index[0].item() == 0  # exact match beats the shifted GT
    empty, _ = atss_assign(anchors, [2], torch.zeros(0, 4), topk=9)
    assert (empty == NEGATIVE).all()
    with pytest.raises(ValueError, match="num_per_level"):
        atss_assign(anchors, [3], gts)


def test_max_iou_assign_thresholds_and_low_quality_matches():
    gts = torch.tensor([[0, 0, 10, 10], [50, 50, 60, 60]], dtype=torch.float32)
    boxes = torch.tensor([
        [0, 0, 10, 10],    # IoU 1 with GT0 -> positive
        [0, 0, 10, 15],    # IoU 100/150 = 0.667 -> between thresholds: ignored
        [30, 30, 40, 40],  # IoU 0 -> negative
        [50, 50, 65, 65],  # IoU 100/225 = 0.444 with GT1: its best box -> low-quality positive
    ], dtype=torch.float32)
    plain = max_iou_assign(boxes, gts, pos_iou=0.7, neg_iou=0.3)
    assert plain.tolist() == [0, IGNORED, NEGATIVE, IGNORED]
    low = max_iou_assign(boxes, gts, pos_iou=0.7, neg_iou=0.3, min_pos_iou=0.3, match_low_quality=True)
    assert low.tolist() == [0, IGNORED, NEGATIVE, 1]
    strict = max_iou_assign(boxes, gts, pos_iou=0.7, neg_iou=0.3, min_pos_iou=0.5, match_low_quality=True)
    assert strict[3].item() == IGNORED  # 0.444 < min_pos_iou
    assert (max_iou_assign(boxes, torch.zeros(0, 4), 0.7, 0.3) == NEGATIVE).all()


def test_random_sampler_counts_ratio_and_seed():
    gt_index = torch.cat([torch.zeros(100, dtype=torch.int64), torch.full((300,), NEGATIVE), torch.full((20,), IGNORED)])
    gt_index = gt_index[torch.randperm(420, generator=torch.Generator().manual_seed(3))]
    pos, neg = random_sample(gt_index, 64, 0.25, torch.Generator().manual_seed(7))
    assert (pos.numel(), neg.numel()) == (16, 48)
    assert (gt_index[pos] >= 0).all() and (gt_index[neg] == NEGATIVE).all()
    assert len(set(pos.tolist())) == 16 and len(set(neg.tolist())) == 48
    pos2, neg2 = random_sample(gt_index, 64, 0.25, torch.Generator().manual_seed(7))
    assert torch.equal(pos, pos2) and torch.equal(neg, neg2)
    pos3, _ = random_sample(gt_index, 64, 0.25, torch.Generator().manual_seed(8))
    assert not torch.equal(pos, pos3)
    few = gt_index.clone()
    few[torch.nonzero(few >= 0).flatten()[5:]] = IGNORED  # only 5 positives left: negatives fill up
    pos, neg = random_sample(few, 64, 0.25)
    assert (pos.numel(), neg.numel()) == (5, 59)


# ---------------------------------------------------------------- anchors, deltas, NMS


def test_anchor_layout_and_delta_round_trip():
    base = cell_anchors(8, [4.0], [0.5, 1.0, 2.0])
    wh = base[:, 2:] - base[:, :2]
    assert torch.allclose(wh.prod(1), torch.full((3,), 32.0**2))
    assert torch.allclose(wh[:, 1] / wh[:, 0], torch.tensor([0.5, 1.0, 2.0]))
    levels = grid_anchors([(2, 3)], [8], [4.0], [1.0])
    centres = (levels[0][:, :2] + levels[0][:, 2:]) / 2
    assert centres[:3].tolist() == [[4, 4], [12, 4], [20, 4]] and centres[3].tolist() == [4, 12]
    ref = torch.tensor([[10.0, 10.0, 30.0, 50.0]])
    tgt = torch.tensor([[12.0, 5.0, 40.0, 45.0]])
    assert torch.allclose(decode_deltas(ref, encode_deltas(ref, tgt, (0.1, 0.1, 0.2, 0.2)), (0.1, 0.1, 0.2, 0.2)), tgt)


def test_nms_by_hand():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    # box 3 (best) suppresses 0 (IoU 0.9) and 0 would have suppressed 1; 1 vs 3: IoU 72/118 = 0.61 > 0.5.
    assert nms(boxes, scores, 0.5).tolist() == [3, 2]
    assert nms(boxes, scores, 0.95).tolist() == [3, 0, 1, 2]
    # Boxes of different groups never suppress each other: 1 survives box 3 in another group.
    assert sorted(batched_nms(boxes, scores, torch.tensor([0, 1, 1, 0]), 0.5).tolist()) == [1, 2, 3]


# ---------------------------------------------------------------- RoIAlign


def bilinear(feat, y, x):
    """Reference bilinear read of a [H, W] map at index coordinates, torchvision's border rules."""
    h, w = feat.shape
    if y < -1 or y > h or x < -1 or x > w:
        return 0.0
    y, x = min(max(y, 0.0), h - 1), min(max(x, 0.0), w - 1)
    y0, x0 = int(y), int(x)
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * feat[y0, x0] + (1 - ly) * lx * feat[y0, x1]
            + ly * (1 - lx) * feat[y1, x0] + ly * lx * feat[y1, x1]).item()


def reference_roi_align(feat, box, out, scale, ratio):
    x0, y0, x1, y1 = [v * scale - 0.5 for v in box]
    bw, bh = (x1 - x0) / out, (y1 - y0) / out
    res = torch.zeros(out, out)
    for i in range(out):
        for j in range(out):
            vals = [bilinear(feat, y0 + (i + (sy + 0.5) / ratio) * bh, x0 + (j + (sx + 0.5) / ratio) * bw)
                    for sy in range(ratio) for sx in range(ratio)]
            res[i, j] = sum(vals) / len(vals)
    return res


def test_roi_align_matches_hand_computed_bilinear_average():
    torch.manual_seed(0)
    feats = torch.randn(2, 3, 5, 6)
    boxes = [[2.0, 2.0, 9.0, 7.0], [-3.0, 1.0, 4.0, 11.0], [8.0, 6.0, 13.0, 10.0]]  # last two cross the border
    rois = torch.tensor([[1.0] + boxes[0], [0.0] + boxes[1], [1.0] + boxes[2]])
    out = roi_align(feats, rois, 3, spatial_scale=0.5, sampling_ratio=2)
    assert out.shape == (3, 3, 3, 3)
    for r, (b, box) in enumerate(zip([1, 0, 1], boxes)):
        for c in range(3):
            expected = reference_roi_align(feats[b, c], box, 3, 0.5, 2)
            assert torch.allclose(out[r, c], expected, atol=1e-5), (r, c)
    # A 2x2 box on integer cells with one sample per bin reads the cell centres exactly.
    grid = torch.arange(16.0).view(1, 1, 4, 4)
    assert roi_align(grid, torch.tensor([[0.0, 1.0, 1.0, 3.0, 3.0]]), 2, 1.0, 1).flatten().tolist() == [5, 6, 9, 10]


def test_multilevel_roi_align_routes_by_box_size_and_passes_gradients():
    feats = [torch.randn(1, 2, 16, 16, requires_grad=True), torch.randn(1, 2, 8, 8, requires_grad=True)]
    rois = torch.tensor([[0.0, 0, 0, 40, 40], [0.0, 0, 0, 120, 120]])
    assert roi_levels(rois[:, 1:], 2).tolist() == [0, 1]  # sqrt(area) 40 < 112 <= 120
    out = multilevel_roi_align(feats, [8, 16], rois, 2)
    assert torch.allclose(out[0], roi_align(feats[0], rois[:1], 2, 1 / 8))
    assert torch.allclose(out[1], roi_align(feats[1], rois[1:], 2, 1 / 16))
    out.sum().backward()
    assert feats[0].grad.abs().sum() > 0 and feats[1].grad.abs().sum() > 0


# ---------------------------------------------------------------- pyramid and positive queries


def test_pyramid_split_and_simple_feature_pyramid():
    a, b = torch.randn(2, 8, 4, 6), torch.randn(2, 8, 2, 3)
    memory = torch.cat([a.flatten(2), b.flatten(2)], 2).transpose(1, 2)
    levels = split_levels(memory, [(4, 6), (2, 3)])
    assert torch.equal(levels[0], a) and torch.equal(levels[1], b)
    sfp = SimpleFeaturePyramid(32, 1)
    outs = sfp([torch.randn(1, 32, 3, 5)])
    assert [tuple(o.shape[-2:]) for o in outs] == [(12, 20), (6, 10), (3, 5), (2, 3)]
    assert sfp.output_strides([32]) == [8, 16, 32, 64]
    mask = torch.zeros(2, 10, 12, dtype=torch.bool)
    mask[1, 7:, :] = True
    assert image_sizes(mask).tolist() == [[10, 12], [7, 12]]


def test_atss_head_positives_are_its_assigned_anchors():
    torch.manual_seed(0)
    head = ATSSHead(ATSSHeadConfig(anchor_scale=4.0), d_model=32, num_classes=3, num_levels=2)
    feats = [torch.randn(2, 32, 8, 8), torch.randn(2, 32, 4, 4)]
    image_hw = torch.tensor([[64.0, 64.0], [64.0, 48.0]])
    _, _, targets = batch()
    losses, positives = head(feats, [8, 16], image_hw, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    anchors = torch.cat(grid_anchors([(8, 8), (4, 4)], [8, 16], [4.0], [1.0]))
    gt_index, _ = head.assign(anchors, [64, 16], image_hw, targets)
    for b, t in enumerate(targets):
        pos = torch.nonzero(gt_index[b] >= 0).flatten()
        assert pos.numel() > 0
        assert torch.equal(positives.boxes_xyxy[b], anchors[pos])
        assert torch.equal(positives.labels[b], t["labels"][gt_index[b, pos]])
        assert torch.equal(positives.gt_boxes_cxcywh[b], t["boxes"][gt_index[b, pos]])
    # Anchors centred in the padding (image 1 is 48 px wide) are ignored, never positive.
    centres_x = (anchors[:, 0] + anchors[:, 2]) / 2
    assert (gt_index[1][centres_x >= 48] == IGNORED).all()
    ctr = centerness_targets(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([[0.0, 0, 20, 10]]))
    assert ctr.item() == pytest.approx((5 / 15) ** 0.5)


def test_rcnn_head_losses_proposals_and_seeded_sampling():
    from edgedet.nn.co_heads.rcnn_head import RCNNHead, RCNNHeadConfig

    torch.manual_seed(0)
    feats = [torch.randn(2, 32, 8, 8, requires_grad=True), torch.randn(2, 32, 4, 4, requires_grad=True)]
    image_hw = torch.tensor([[64.0, 64.0], [64.0, 48.0]])
    _, _, targets = batch()
    for agnostic in (False, True):
        cfg = RCNNHeadConfig(fc_dim=32, anchor_scales=[4.0], pre_nms_top_k=50, post_nms_top_k=20, rpn_num_samples=32,
                             roi_num_samples=16, roi_size=3, class_agnostic=agnostic)
        head = RCNNHead(cfg, 32, num_classes=3, num_levels=2)
        assert head.fc_reg.out_features == (4 if agnostic else 12)
        head.generator = torch.Generator().manual_seed(0)
        losses, positives = head(feats, [8, 16], image_hw, targets)
        assert set(losses) == set(head.loss_weights()) and all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        assert head.rpn.rpn_reg.weight.grad.abs().sum() > 0 and head.fc_reg.weight.grad.abs().sum() > 0
        for b, t in enumerate(targets):
            # The GT boxes are proposals too, so each GT is among the positives with its own label.
            gt_px = box_cxcywh_to_xyxy(t["boxes"]) * torch.stack([image_hw[b, 1], image_hw[b, 0]] * 2)
            for g, box in enumerate(gt_px):
                hit = (positives.boxes_xyxy[b] - box).abs().sum(1) < 1e-4
                assert hit.any() and (positives.labels[b][hit] == t["labels"][g]).all()
            assert positives.boxes_xyxy[b].shape[0] + positives.negatives_xyxy[b].shape[0] <= cfg.roi_num_samples
        head.generator = torch.Generator().manual_seed(0)
        _, again = head(feats, [8, 16], image_hw, targets)
        assert all(torch.equal(x, y) for x, y in zip(positives.negatives_xyxy, again.negatives_xyxy))
    scores = [torch.randn(2, 8 * 8 * 3), torch.randn(2, 4 * 4 * 3)]
    deltas = [torch.zeros(2, 8 * 8 * 3, 4), torch.zeros(2, 4 * 4 * 3, 4)]
    anchors = grid_anchors([(8, 8), (4, 4)], [8, 16], [4.0], [0.5, 1.0, 2.0])
    props = head.proposals(scores, deltas, anchors, image_hw)
    assert all(p.shape[0] <= 20 for p in props)
    assert (props[1][:, 2] <= 48).all() and (props[1][:, 0] >= 0).all()  # clipped to the unpadded image


def test_heads_and_queries_without_ground_truth():
    from edgedet.nn.co_heads.rcnn_head import RCNNHead, RCNNHeadConfig

    torch.manual_seed(0)
    feats = [torch.randn(1, 32, 8, 8), torch.randn(1, 32, 4, 4)]
    image_hw = torch.tensor([[64.0, 64.0]])
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]
    heads = [ATSSHead(ATSSHeadConfig(), 32, 3, 2),
             RCNNHead(RCNNHeadConfig(fc_dim=32, roi_size=3, pre_nms_top_k=30, post_nms_top_k=10), 32, 3, 2)]
    builder = PositiveQueryBuilder(32, pool_size=2)
    for head in heads:
        losses, positives = head(feats, [8, 16], image_hw, empty)
        assert all(torch.isfinite(v) for v in losses.values()) and positives.counts() == [0]
        group = builder(feats, [8, 16], image_hw, positives, 10, 3)
        assert group.content.shape == (1, 1, 32) and not group.valid.any() and group.labels.tolist() == [[3]]


def make_positives():
    boxes = [torch.tensor([[0.0, 0, 32, 32], [16, 16, 48, 64], [40, 8, 64, 24]]), torch.tensor([[8.0, 8, 24, 40]])]
    labels = [torch.tensor([2, 0, 1]), torch.tensor([3])]
    gts = [torch.tensor([[0.2, 0.2, 0.3, 0.3], [0.5, 0.6, 0.4, 0.5], [0.8, 0.2, 0.3, 0.2]]),
           torch.tensor([[0.2, 0.4, 0.2, 0.5]])]
    negatives = [torch.tensor([[0.0, 40, 16, 56]]), torch.tensor([[30.0, 30, 60, 60], [0, 0, 8, 8]])]
    return Positives(boxes, labels, gts, negatives)


def test_positive_query_group_counts_boxes_targets_and_cap():
    torch.manual_seed(0)
    builder = PositiveQueryBuilder(32, pool_size=2, with_query_pos=True)
    feats = [torch.randn(2, 32, 8, 8), torch.randn(2, 32, 4, 4)]
    image_hw = torch.tensor([[64.0, 64.0], [64.0, 64.0]])
    pos = make_positives()
    group = builder(feats, [8, 16], image_hw, pos, max_queries=10, num_classes=4)
    assert group.content.shape == (2, 3, 32) and group.query_pos.shape == (2, 3, 32)
    assert group.valid.sum(1).tolist() == [3, 1]
    expected = torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.5, 0.625, 0.5, 0.75], [0.8125, 0.25, 0.375, 0.25]])
    assert torch.allclose(group.boxes_cxcywh[0], expected)
    assert torch.allclose(group.boxes_cxcywh[1, 0], torch.tensor([0.25, 0.375, 0.25, 0.5]))
    assert group.labels.tolist() == [[2, 0, 1], [3, 4, 4]]  # padding slots are background (num_classes)
    assert torch.equal(group.target_boxes_cxcywh[0], pos.gt_boxes_cxcywh[0])
    # Padding slots take one of the image's negatives as their box.
    pads = box_cxcywh_to_xyxy(group.boxes_cxcywh[1, 1:]) * 64
    negs = pos.negatives_xyxy[1]
    assert all(any(torch.allclose(p, n, atol=1e-3) for n in negs) for p in pads)
    targets, indices = fixed_assignment(group.labels, group.target_boxes_cxcywh, group.valid)
    assert targets[1]["labels"].tolist() == [3] and indices[0][0].tolist() == [0, 1, 2]
    # Capped: a random subset of the positives, never more than max_queries per image.
    capped = builder(feats, [8, 16], image_hw, pos, max_queries=2, num_classes=4)
    assert capped.valid.sum(1).tolist() == [2, 1]
    for k in range(2):
        row = (expected - capped.boxes_cxcywh[0, k]).abs().sum(1).argmin()
        assert torch.allclose(capped.boxes_cxcywh[0, k], expected[row])
        assert capped.labels[0, k] == pos.labels[0][row]


def test_group_attention_mask_isolates_groups():
    dn_mask = torch.tensor([[False, True, False], [True, False, False], [True, True, False]])
    m = group_attention_mask(3, [2, 1], dn_mask)
    assert m.shape == (6, 6)
    assert torch.equal(m[:3, :3], dn_mask)
    assert m[:3, 3:].all()  # main (and denoising) queries see no auxiliary group
    assert not m[3:5, 3:5].any() and m[3:5, :3].all() and m[3:5, 5:].all()  # group 1 sees only itself
    assert not m[5, 5] and m[5, :5].all()


# ---------------------------------------------------------------- the models


def test_training_forward_backward_all_losses_and_gradients(co_model):
    images, mask, targets = batch()
    model = co_model.train()
    model.zero_grad()
    criterion = model.build_criterion()
    out = model(images, mask, targets)
    assert len(out["co_query_outputs"]) == 2
    losses = criterion(out, targets)
    for key in ("loss_cls_atss0", "loss_giou_atss0", "loss_centerness_atss0", "loss_rpn_cls_rcnn1",
                "loss_rpn_bbox_rcnn1", "loss_roi_cls_rcnn1", "loss_roi_giou_rcnn1", "loss_ce_pos0", "loss_giou_pos1"):
        assert key in losses and key in criterion.weight_dict
    assert all(torch.isfinite(v) for v in losses.values()), {k: float(v) for k, v in losses.items()}
    assert criterion.weight_dict["loss_cls_atss0"] == pytest.approx(2.0 * 1 * 1.0)  # λ2 · dec_layers · cls coef
    assert criterion.weight_dict["loss_roi_giou_rcnn1"] == pytest.approx(2.0 * 10.0)
    criterion.total_loss(losses).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    # Every trainable parameter takes part (DistributedDataParallel needs no unused-parameter search).
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    for name in ("co.heads.0.atss_cls.weight", "co.heads.0.atss_centerness.weight", "co.heads.1.rpn.rpn_cls.weight",
                 "co.heads.1.fc_cls.weight", "co.queries.0.feat_proj.weight", "co.queries.1.pos_proj.weight",
                 "transformer.encoder.layers.0.linear1.weight", "transformer.decoder.layers.0.self_attn.in_proj_weight"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name


def test_eval_forward_equals_base_model_and_parameter_counts(co_model):
    images, mask, _ = batch()
    model = co_model.eval()
    base = model.to_base_model()
    assert type(base) in (DINO, DeformableDETR) and base.config.name == model.config.base
    assert not any(n.startswith("co.") for n, _ in base.named_parameters())
    fresh = create_model(model.config.base, **{k: v for k, v in TINY[model.config.name].items() if k != "aux_heads"})
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(base) == count(fresh)
    assert count(model) == count(fresh) + count(model.co)
    fresh.load_state_dict(base.state_dict())
    fresh.eval()
    with torch.no_grad():
        a, b, c = model(images, mask), base(images, mask), fresh(images, mask)
        targets_ignored = model(images, mask, batch()[2])  # eval mode ignores targets
    assert not any(k.startswith("co_") for k in a)
    for out in (b, c, targets_ignored):
        assert torch.equal(a["pred_logits"], out["pred_logits"]) and torch.equal(a["pred_boxes"], out["pred_boxes"])
    assert model.deploy() is model and not model.training


def test_training_path_reproduces_base_forward_without_groups(co_model):
    """The adapter's encode/decode with no auxiliary group equals the base class's own forward."""
    images, mask, targets = batch()
    model = co_model.train()
    base_cls = DINO if isinstance(model, CoDINO) else DeformableDETR
    torch.manual_seed(5)
    ref = base_cls.forward(model, images, mask, targets)
    adapter = CO_ADAPTERS.get(model.config.base)
    torch.manual_seed(5)
    out, groups = adapter.decode(model, adapter.encode(model, images, mask), targets, [])
    assert groups == []
    for key in ("pred_logits", "pred_boxes"):
        assert torch.allclose(out[key], ref[key], atol=1e-6)
        assert torch.allclose(out["aux_outputs"][-1][key] if out["aux_outputs"] else out[key],
                              ref["aux_outputs"][-1][key] if ref["aux_outputs"] else ref[key], atol=1e-6)
    if "dn_outputs" in ref:
        assert torch.allclose(out["dn_outputs"]["pred_boxes"], ref["dn_outputs"]["pred_boxes"], atol=1e-6)


def test_main_queries_do_not_see_auxiliary_groups(co_model):
    images, mask, targets = batch()
    model = co_model.eval()  # no dropout / noise differences; decode is called directly
    adapter = CO_ADAPTERS.get(model.config.base)
    torch.manual_seed(0)
    feats = [torch.randn(2, 64, 12, 12)]
    builder = model.co["queries"][0]
    group_a = builder(feats, [8], torch.full((2, 2), 96.0), make_positives(), 10, 4)
    group_b = builder(feats, [8], torch.full((2, 2), 96.0), make_positives(), 10, 4)
    group_b.content = group_b.content + torch.randn_like(group_b.content)
    with torch.no_grad():
        enc = adapter.encode(model, images, mask)
        torch.manual_seed(1)
        out_a, g_a = adapter.decode(model, enc, targets, [group_a, group_a])
        torch.manual_seed(1)
        out_b, g_b = adapter.decode(model, enc, targets, [group_a, group_b])
    assert torch.allclose(out_a["pred_logits"], out_b["pred_logits"], atol=1e-6)  # main queries unaffected
    assert torch.allclose(out_a["pred_boxes"], out_b["pred_boxes"], atol=1e-6)
    assert torch.allclose(g_a[0]["pred_logits"], g_b[0]["pred_logits"], atol=1e-6)  # group 0 unaffected by group 1
    assert not torch.allclose(g_a[1]["pred_logits"], g_b[1]["pred_logits"], atol=1e-4)


def test_multi_scale_model_adds_the_official_downsampled_level():
    """Official Co-DINO / Co-Deformable-DETR: the encoder levels plus a 3x3 stride-2 conv + GroupNorm level."""
    torch.manual_seed(0)
    model = create_model("co_deformable_detr", **dict(TINY["co_deformable_detr"], num_queries=8))
    pyramid = model.co["pyramid"]
    assert isinstance(pyramid, MultiScaleDownsamplePyramid)
    levels = [torch.randn(2, pyramid.downsample[0].in_channels, 8, 10), torch.randn(2, pyramid.downsample[0].in_channels, 4, 5)]
    outs = pyramid(levels)
    assert len(outs) == 3 and outs[0] is levels[0] and tuple(outs[2].shape[-2:]) == (2, 3)
    conv, norm = pyramid.downsample
    assert torch.allclose(outs[2], norm(conv(levels[1])))
    assert pyramid.output_strides([8, 16]) == [8, 16, 32]
    assert model.co["heads"][0].scales.numel() == model.config.num_feature_levels + 1


def test_single_scale_model_uses_simple_pyramid():
    torch.manual_seed(0)
    model = create_model("co_deformable_detr", **dict(TINY["co_deformable_detr"], num_feature_levels=1, num_queries=8))
    assert isinstance(model.co["pyramid"], SimpleFeaturePyramid)
    images, mask, targets = batch()
    out = model.train()(images, mask, targets)
    losses = model.build_criterion()(out, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    assert model.co["heads"][0].scales.numel() == 4


# ---------------------------------------------------------------- config


def test_config_round_trip_and_errors():
    assert {"co_dino", "co_deformable_detr"} <= set(list_models())
    model = create_model("co_dino", **TINY["co_dino"])
    data = yaml.safe_load(yaml.safe_dump(to_dict(model.config)))
    assert data["base"] == "dino" and data["aux_heads"][1]["fc_dim"] == 64
    assert model_config_from_dict(data) == model.config
    heads = parse_aux_heads(model.config.aux_heads)
    assert [h.type for h in heads] == ["atss", "rcnn"] and heads[0].max_pos_queries == 12
    with pytest.raises(UnknownNameError, match="atss, rcnn"):
        parse_aux_heads([{"type": "fcos"}])
    with pytest.raises(ConfigError, match="Valid keys"):
        parse_aux_heads([{"type": "atss", "topk_typo": 3}])
    with pytest.raises(ConfigError, match="base"):
        create_model("co_dino", **dict(TINY["co_dino"], base="deformable_detr"))
    with pytest.raises(ConfigError, match="two_stage"):
        create_model("co_deformable_detr", **dict(TINY["co_deformable_detr"], two_stage=False, with_box_refine=False))
