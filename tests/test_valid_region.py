"""The valid-region input (#25): how the runtime computes it, checks it and treats artifacts without it."""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from runtime.detector import Detector
from runtime.manifest import ManifestError, read_sidecar, write_sidecar
from runtime.manifest import PreprocessSpec
from runtime.preprocess import Preprocessor, check_valid_region, valid_region
from runtime.testing import make_blob_artifact


def test_preprocessor_reports_each_images_region_and_exact_ratios():
    pre = Preprocessor(PreprocessSpec(size=(96, 128)))
    frames = [np.zeros((150, 250, 3), np.uint8), np.zeros((230, 140, 3), np.uint8), np.zeros((96, 128, 3), np.uint8)]
    _, infos = pre(frames)
    np.testing.assert_array_equal(valid_region(infos, (96, 128)), [[77, 128], [96, 58], [96, 128]])
    assert valid_region(infos, (96, 128)).dtype == np.int32
    # boxes map back by the exact pixel ratio of each axis (77/150 vs 128/250), not one rounded scale
    assert infos[0].scale_hw == pytest.approx((77 / 150, 128 / 250))
    np.testing.assert_allclose(infos[0].to_original(np.array([[0, 0, 128, 77]], np.float32)), [[0, 0, 250, 150]], atol=1e-4)


def test_stretch_has_no_padding_so_the_region_is_the_whole_input():
    pre = Preprocessor(PreprocessSpec(size=(96, 128), resize="stretch"))
    _, infos = pre(np.zeros((150, 250, 3), np.uint8))
    np.testing.assert_array_equal(valid_region(infos, (96, 128)), [[96, 128]])


@pytest.mark.parametrize("bad,match", [([[0, 50]], "outside"), ([[97, 50]], "outside"), ([[50, 129]], "outside"),
                                       ([50, 60], r"\[B, 2\]"), ([[50.5, 60]], "whole pixels")])
def test_a_region_outside_the_input_is_refused_in_one_line(bad, match):
    with pytest.raises(ValueError, match=match) as e:
        check_valid_region(np.array(bad), (96, 128))
    assert "\n" not in str(e.value)


def test_a_manifest_that_feeds_an_input_the_graph_lacks_is_refused(tmp_path):
    path = make_blob_artifact(tmp_path)
    write_sidecar(dataclasses.replace(read_sidecar(path), valid_input="valid_hw"), path)
    with pytest.raises(ManifestError, match=r"feeds \['images', 'valid_hw'\] but the graph's inputs are \['images'\]"):
        Detector(path)


def test_an_old_artifact_of_a_mask_family_runs_as_exported_and_says_so(tmp_path, caplog):
    """The documented fallback: the letterbox without a mask, as before, with a warning naming the fix."""
    path = make_blob_artifact(tmp_path)
    write_sidecar(dataclasses.replace(read_sidecar(path), family="dino"), path)
    with caplog.at_level(logging.WARNING, logger="runtime.detector"):
        det = Detector(path)
    assert "predates the valid-region input" in caplog.text and "re-export" in caplog.text
    dets = det(np.zeros((150, 250, 3), np.uint8))  # still runs
    assert dets.image_size == (150, 250)
    det.close()
