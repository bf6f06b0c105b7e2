"""SetCriterion: losses vanish where predictions equal targets; keys, weights and suffixes."""
import pytest
import torch

from edgedet.losses import HungarianMatcher, SetCriterion, sigmoid_focal_loss

WEIGHTS = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}


def _targets():
    return [{"labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]])},
            {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])}]


def _perfect_outputs(targets, nq=4, nc=3, focal=False, big=20.0):
    bs = len(targets)
    logits = torch.full((bs, nq, nc if focal else nc + 1), -big)
    if not focal:
        logits[..., -1] = big  # unmatched queries predict no-object
    boxes = torch.full((bs, nq, 4), 0.5)
    boxes[..., 2:] = 0.1
    for b, t in enumerate(targets):
        for q, (c, box) in enumerate(zip(t["labels"], t["boxes"])):
            logits[b, q + 1] = -big
            logits[b, q + 1, c] = big
            boxes[b, q + 1] = box
    return {"pred_logits": logits, "pred_boxes": boxes}


@pytest.mark.parametrize("focal", [False, True])
def test_losses_vanish_on_perfect_predictions(focal):
    targets = _targets()
    crit = SetCriterion(3, HungarianMatcher(focal=focal), WEIGHTS, loss_class="focal" if focal else "ce")
    perfect = crit(_perfect_outputs(targets, focal=focal), targets)
    assert perfect["loss_ce"].item() < 1e-6
    assert perfect["loss_bbox"].item() < 1e-6
    assert perfect["loss_giou"].item() < 1e-6
    assert perfect["cardinality_error"].item() == 0
    noisy = _perfect_outputs(targets, focal=focal, big=0.5)
    noisy["pred_boxes"] = (noisy["pred_boxes"] + 0.05).clamp(0, 1)
    worse = crit(noisy, targets)
    for k in ("loss_ce", "loss_bbox", "loss_giou"):
        assert worse[k].item() > perfect[k].item() + 1e-3


def test_box_loss_values_hand_computed():
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    out = {"pred_logits": torch.zeros(1, 1, 2), "pred_boxes": torch.tensor([[[0.55, 0.5, 0.2, 0.2]]])}
    losses = SetCriterion(1, HungarianMatcher(), WEIGHTS)(out, targets)
    assert losses["loss_bbox"].item() == pytest.approx(0.05, abs=1e-6)
    # overlap 0.15*0.2=0.03, union 0.05, hull 0.25*0.2=0.05 -> giou 0.6
    assert losses["loss_giou"].item() == pytest.approx(0.4, abs=1e-6)
    # CE with uniform logits over 2 columns: log 2 for the matched query (weight 1)
    assert losses["loss_ce"].item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-6)


def test_eos_coef_weights_the_no_object_class():
    targets = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]
    out = {"pred_logits": torch.zeros(1, 3, 3), "pred_boxes": torch.rand(1, 3, 4)}
    for eos in (0.1, 0.5):
        losses = SetCriterion(2, HungarianMatcher(), WEIGHTS, eos_coef=eos)(out, targets)
        # weighted mean over queries that are all no-object: the weight cancels
        assert losses["loss_ce"].item() == pytest.approx(torch.log(torch.tensor(3.0)).item(), abs=1e-6)
        assert losses["loss_bbox"].item() == 0 and losses["loss_giou"].item() == 0


def test_focal_loss_normalised_by_num_boxes():
    logits = torch.tensor([[[0.0, 0.0]]])
    onehot = torch.tensor([[[1.0, 0.0]]])
    # p = 0.5: positive term 0.25 * 0.25 * log 2, negative 0.75 * 0.25 * log 2
    expected = (0.25 * 0.25 + 0.75 * 0.25) * torch.log(torch.tensor(2.0)).item()
    assert sigmoid_focal_loss(logits, onehot, 1.0).item() == pytest.approx(expected, abs=1e-6)
    assert sigmoid_focal_loss(logits, onehot, 4.0).item() == pytest.approx(expected / 4, abs=1e-6)


@pytest.mark.parametrize("focal", [False, True])
def test_aux_and_enc_keys_are_present_and_weighted(focal):
    targets = _targets()
    crit = SetCriterion(3, HungarianMatcher(focal=focal), WEIGHTS, loss_class="focal" if focal else "ce")
    main = _perfect_outputs(targets, focal=focal, big=1.0)
    outputs = {**main, "aux_outputs": [dict(main), dict(main)], "enc_outputs": dict(main)}
    losses = crit(outputs, targets)
    for base in ("loss_ce", "loss_bbox", "loss_giou"):
        for key in (base, base + "_0", base + "_1", base + "_enc"):
            assert key in losses
            assert crit.weight_dict[key] == WEIGHTS[base]
    assert "cardinality_error" in losses and crit.weight_dict["cardinality_error"] == 0
    assert set(losses) <= set(crit.weight_dict)
    assert torch.equal(losses["loss_bbox_0"], losses["loss_bbox"])
    total = crit.total_loss(losses)
    assert total.item() == pytest.approx(sum(v.item() * crit.weight_dict[k] for k, v in losses.items()), rel=1e-6)


def test_encoder_targets_are_class_agnostic_for_focal():
    targets = _targets()
    crit = SetCriterion(3, HungarianMatcher(focal=True), WEIGHTS, loss_class="focal")
    assert all((t["labels"] == 0).all() for t in crit.encoder_targets(targets))
    assert torch.equal(targets[0]["labels"], torch.tensor([0, 2]))  # the originals are untouched
    ce = SetCriterion(3, HungarianMatcher(), WEIGHTS)
    assert ce.encoder_targets(targets)[0]["labels"].tolist() == [0, 2]


def test_gradients_flow_to_predictions():
    targets = _targets()
    out = _perfect_outputs(targets, big=0.3)
    out["pred_logits"].requires_grad_(True)
    out["pred_boxes"] = (out["pred_boxes"] * 0.9).requires_grad_(True)
    crit = SetCriterion(3, HungarianMatcher(), WEIGHTS)
    crit.total_loss(crit(out, targets)).backward()
    assert out["pred_logits"].grad.abs().sum() > 0 and out["pred_boxes"].grad.abs().sum() > 0


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="Valid: labels, boxes, cardinality"):
        SetCriterion(3, HungarianMatcher(), WEIGHTS, losses=("labels", "masks"))
    with pytest.raises(ValueError, match="Valid: ce, focal"):
        SetCriterion(3, HungarianMatcher(), WEIGHTS, loss_class="softmax")


def test_suffixed_keys_inherit_the_base_weight():
    crit = SetCriterion(3, HungarianMatcher(), {**WEIGHTS, "loss_ce_interm": 0.5})
    crit._cover_weights({k: torch.zeros(()) for k in ("loss_bbox_dn_1", "loss_giou_enc", "loss_ce_interm", "extra_log")})
    assert crit.weight_dict["loss_bbox_dn_1"] == 5.0 and crit.weight_dict["loss_giou_enc"] == 2.0
    assert crit.weight_dict["loss_ce_interm"] == 0.5 and crit.weight_dict["extra_log"] == 0.0
