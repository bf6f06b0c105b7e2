"""runtime.preprocess: Preprocessor equals normalize+letterbox bit for bit; mapping back; frame validation."""
import cv2
import numpy as np
import pytest

from runtime.manifest import PreprocessSpec
from runtime.preprocess import LetterboxInfo, Preprocessor, as_bgr, letterbox, normalize


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("hw", [(300, 500), (97, 61), (64, 64), (1080, 1920), (40, 30)])
@pytest.mark.parametrize("size", [(96, 128), (640, 640)])
def test_letterbox_matches_reference(hw, size):
    spec = PreprocessSpec(size=size)
    bgr = _image(*hw)
    x, infos = Preprocessor(spec)(bgr)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    boxed, info = letterbox(rgb, size, pad_value=spec.pad_value)
    ref = normalize(boxed, spec.mean, spec.std)
    assert x.shape == (1, 3) + size and x.dtype == np.float32
    np.testing.assert_array_equal(x[0], ref)
    assert infos[0] == info


def test_stretch_and_bgr_order():
    spec = PreprocessSpec(size=(64, 96), resize="stretch", channel_order="BGR", mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7))
    bgr = _image(120, 50, seed=3)
    x, infos = Preprocessor(spec)([bgr, bgr[::-1].copy()])
    ref0 = normalize(cv2.resize(bgr, (96, 64), interpolation=cv2.INTER_LINEAR), spec.mean, spec.std)
    ref1 = normalize(cv2.resize(bgr[::-1].copy(), (96, 64), interpolation=cv2.INTER_LINEAR), spec.mean, spec.std)
    np.testing.assert_array_equal(x[0], ref0)
    np.testing.assert_array_equal(x[1], ref1)
    assert infos[0].scale_hw == pytest.approx((64 / 120, 96 / 50))


def test_letterbox_padding_is_normalised_pad_value():
    spec = PreprocessSpec(size=(100, 100), pad_value=(255, 0, 0))  # RGB: pure red padding
    x, info = Preprocessor(spec)(np.zeros((50, 100, 3), np.uint8))
    assert info[0].scale == 1.0
    pad = x[0, :, 60, 10]  # below the 50-row image
    expected = (np.array([1.0, 0.0, 0.0], np.float32) - np.float32(spec.mean)) / np.float32(spec.std)
    np.testing.assert_allclose(pad, expected, rtol=1e-6)


def test_grayscale_and_bgra_frames_are_converted():
    pre = Preprocessor(PreprocessSpec(size=(32, 32)))
    gray = _image(40, 40)[:, :, 0]
    x_gray, _ = pre(gray)
    x_bgr, _ = pre(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))
    np.testing.assert_array_equal(x_gray, x_bgr)
    bgra = cv2.cvtColor(_image(40, 40), cv2.COLOR_BGR2BGRA)
    np.testing.assert_array_equal(pre(bgra)[0], pre(bgra[:, :, :3].copy())[0])


@pytest.mark.parametrize("bad, match", [
    (None, "frame is None"),
    (np.zeros((10, 10, 3), np.float32), "uint8"),
    (np.zeros((10, 10, 5), np.uint8), "shape"),
    (np.zeros((0, 10, 3), np.uint8), "empty"),
    ("frame.jpg", "numpy array"),
])
def test_bad_frames_raise_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        as_bgr(bad)


def test_to_original_inverts_mapping_and_clips():
    info = LetterboxInfo(scale=0.5, pad_x=4, pad_y=2, orig_size=(100, 200))
    net = np.array([[4 + 10 * 0.5, 2 + 20 * 0.5, 4 + 50 * 0.5, 2 + 60 * 0.5], [0, 0, 500, 500]], np.float32)
    out = info.to_original(net)
    np.testing.assert_allclose(out[0], [10, 20, 50, 60], atol=1e-5)
    np.testing.assert_allclose(out[1], [0, 0, 200, 100])
    stretch = LetterboxInfo(scale=0.5, pad_x=0, pad_y=0, orig_size=(100, 200), scale_hw=(2.0, 0.5))
    np.testing.assert_allclose(stretch.to_original(np.array([[10, 10, 20, 20]], np.float32)), [[20, 5, 40, 10]])


def test_unknown_spec_values_are_rejected():
    with pytest.raises(ValueError, match="letterbox, stretch"):
        Preprocessor(PreprocessSpec(resize="crop"))
    with pytest.raises(ValueError, match="RGB, BGR"):
        Preprocessor(PreprocessSpec(channel_order="YUV"))


def test_agrees_with_training_deploy_transform():
    pytest.importorskip("torch")
    try:
        from edgedet.data.transforms import deploy_transform
    except Exception as e:  # edgedet not importable yet, or the data helper has not landed it
        pytest.skip(f"edgedet.data.transforms.deploy_transform unavailable: {e}")
    # deploy_transform takes RGB and returns (float32 [3, H, W], target); both sides use their
    # defaults, which must agree (letterbox padding with the mean colour).
    spec = PreprocessSpec(size=(96, 128))
    for hw in [(300, 500), (77, 41)]:
        bgr = _image(*hw, seed=7)
        x, infos = Preprocessor(spec)(bgr)
        image, target = deploy_transform(spec.size, spec.mean, spec.std)(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        image = np.asarray(image.numpy() if hasattr(image, "numpy") else image, np.float32)
        np.testing.assert_allclose(image, x[0], atol=1e-6, rtol=0)
        assert target["letterbox"].scale == infos[0].scale


@pytest.mark.parametrize("hw", [(1080, 1920), (97, 61)])  # padding below the image, and to its right
def test_uint8_letterbox_pads_with_the_bgr_pad_value(hw):
    spec = PreprocessSpec(size=(96, 128), input_format="uint8_nhwc", pad_value=(10, 20, 30))  # RGB pad
    bgr = _image(*hw, seed=5)
    x8, infos = Preprocessor(spec)([bgr, bgr])
    ref, info = letterbox(bgr, (96, 128), pad_value=(30, 20, 10))
    assert x8.shape == (2, 96, 128, 3) and x8.dtype == np.uint8
    np.testing.assert_array_equal(x8[0], ref)
    np.testing.assert_array_equal(x8[1], ref)
    assert infos[0] == info
