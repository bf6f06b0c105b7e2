"""Hungarian matcher against brute-force search over all assignments."""
import itertools

import pytest
import torch

from edgedet.losses import HungarianMatcher
from edgedet.nn.box_ops import box_cxcywh_to_xyxy, generalized_box_iou


def _random_case(gen, bs, nq, nc, sizes, focal):
    logits = torch.randn(bs, nq, nc if focal else nc + 1, generator=gen)
    boxes = torch.rand(bs, nq, 4, generator=gen) * 0.5 + 0.25
    targets = [{"labels": torch.randint(0, nc, (n,), generator=gen),
                "boxes": torch.rand(n, 4, generator=gen) * 0.5 + 0.25} for n in sizes]
    return {"pred_logits": logits, "pred_boxes": boxes}, targets


def _brute_force_cost(matcher, logits, boxes, tgt):
    c = matcher.cost_matrix(logits, boxes, tgt["labels"], tgt["boxes"])
    nq, n = c.shape
    return min(sum(c[q, j].item() for j, q in enumerate(perm)) for perm in itertools.permutations(range(nq), n))


@pytest.mark.parametrize("focal", [False, True])
def test_matches_brute_force_optimum(focal):
    gen = torch.Generator().manual_seed(0)
    matcher = HungarianMatcher(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, focal=focal)
    for trial in range(5):
        outputs, targets = _random_case(gen, 2, 5, 3, [3, 1 + trial % 3], focal)
        indices = matcher(outputs, targets)
        for b, ((src, tgt_idx), t) in enumerate(zip(indices, targets)):
            assert len(src) == len(tgt_idx) == len(t["labels"])
            assert len(set(src.tolist())) == len(src)  # one-to-one
            c = matcher.cost_matrix(outputs["pred_logits"][b], outputs["pred_boxes"][b], t["labels"], t["boxes"])
            got = c[src, tgt_idx].sum().item()
            assert got == pytest.approx(_brute_force_cost(matcher, outputs["pred_logits"][b], outputs["pred_boxes"][b], t), abs=1e-5)


def test_cost_terms_match_definitions():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    tgt_boxes = torch.tensor([[0.6, 0.5, 0.2, 0.4]])
    m = HungarianMatcher(cost_class=1.0, cost_bbox=0.0001, cost_giou=0.0001)
    ce = m.cost_matrix(logits, boxes, torch.tensor([1]), tgt_boxes)
    l1 = 0.1 + 0.0 + 0.0 + 0.2
    giou = generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(tgt_boxes))[0, 0].item()
    expected = -logits.softmax(-1)[0, 1].item() + 0.0001 * l1 - 0.0001 * giou
    assert ce.item() == pytest.approx(expected, abs=1e-6)


def test_empty_targets_give_empty_indices():
    gen = torch.Generator().manual_seed(1)
    outputs, targets = _random_case(gen, 3, 4, 2, [0, 2, 0], focal=False)
    indices = HungarianMatcher()(outputs, targets)
    assert [len(i) for i, _ in indices] == [0, 2, 0]
    assert all(i.dtype == torch.int64 and j.dtype == torch.int64 for i, j in indices)
    outputs, targets = _random_case(gen, 2, 4, 2, [0, 0], focal=True)
    assert [(len(i), len(j)) for i, j in HungarianMatcher(focal=True)(outputs, targets)] == [(0, 0), (0, 0)]


def test_prefers_the_obvious_match():
    # query 1 sits exactly on target 0 with its class, query 0 on target 1
    logits = torch.full((1, 3, 3), -5.0)
    logits[0, 1, 0] = 5.0
    logits[0, 0, 1] = 5.0
    boxes = torch.tensor([[[0.7, 0.7, 0.2, 0.2], [0.3, 0.3, 0.2, 0.2], [0.5, 0.5, 0.9, 0.9]]])
    targets = [{"labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]])}]
    src, tgt = HungarianMatcher()({"pred_logits": logits, "pred_boxes": boxes}, targets)[0]
    assert dict(zip(tgt.tolist(), src.tolist())) == {0: 1, 1: 0}


def test_all_zero_costs_rejected():
    with pytest.raises(ValueError, match="non-zero"):
        HungarianMatcher(0, 0, 0)


def test_nan_predictions_give_a_clear_error():
    outputs = {"pred_logits": torch.full((1, 2, 3), float("nan")), "pred_boxes": torch.full((1, 2, 4), 0.5)}
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    with pytest.raises(ValueError, match="non-finite matching cost"):
        HungarianMatcher()(outputs, targets)
