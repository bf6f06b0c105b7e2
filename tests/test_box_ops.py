"""Box conversions, IoU and GIoU against hand-computed values."""
import pytest
import torch

from edgedet.nn.box_ops import box_area, box_cxcywh_to_xyxy, box_iou, box_xyxy_to_cxcywh, generalized_box_iou, inverse_sigmoid


def test_conversions_round_trip_and_values():
    cxcywh = torch.tensor([[0.5, 0.5, 0.2, 0.4], [10.0, 20.0, 4.0, 6.0]])
    xyxy = box_cxcywh_to_xyxy(cxcywh)
    assert torch.allclose(xyxy, torch.tensor([[0.4, 0.3, 0.6, 0.7], [8.0, 17.0, 12.0, 23.0]]))
    assert torch.allclose(box_xyxy_to_cxcywh(xyxy), cxcywh)
    assert box_cxcywh_to_xyxy(torch.zeros(2, 3, 4)).shape == (2, 3, 4)
    assert torch.allclose(box_area(xyxy), torch.tensor([0.08, 24.0]))


def test_iou_and_giou_hand_computed():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0],   # overlap 1, union 7, hull 9
                      [0.0, 0.0, 2.0, 2.0],   # identical
                      [3.0, 0.0, 4.0, 1.0]])  # disjoint: inter 0, union 5, hull 8
    iou, union = box_iou(a, b)
    assert torch.allclose(iou, torch.tensor([[1 / 7, 1.0, 0.0]]))
    assert torch.allclose(union, torch.tensor([[7.0, 4.0, 5.0]]))
    giou = generalized_box_iou(a, b)
    assert torch.allclose(giou, torch.tensor([[1 / 7 - 2 / 9, 1.0, 0.0 - 3 / 8]]))


def test_giou_gradients_exist_and_point_to_target():
    pred = torch.tensor([[0.1, 0.1, 0.5, 0.5]], requires_grad=True)
    tgt = torch.tensor([[0.2, 0.2, 0.6, 0.6]])
    (1 - generalized_box_iou(pred, tgt)).sum().backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
    # moving every coordinate towards the target lowers the loss: gradient is negative
    assert (pred.grad < 0).all()


def test_giou_rejects_degenerate_boxes():
    with pytest.raises(ValueError, match="x1 >= x0"):
        generalized_box_iou(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), torch.tensor([[0.0, 0.0, 1.0, 1.0]]))


def test_inverse_sigmoid_inverts_and_clamps():
    x = torch.tensor([0.1, 0.5, 0.9])
    assert torch.allclose(inverse_sigmoid(x).sigmoid(), x, atol=1e-6)
    assert torch.isfinite(inverse_sigmoid(torch.tensor([0.0, 1.0]))).all()
