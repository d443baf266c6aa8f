"""Every PIL mode the image loader accepts, read at its own depth (hand-computed values)."""
import numpy as np
import pytest
import torch
from PIL import Image

from lrp_ext.cli import dataset as ds
from lrp_ext.cli.models import InputError

H, W = 3, 4


def _ramp16():
    """A 16-bit ramp 0 .. 65535 (mean exactly 0.5 once scaled)."""
    return np.linspace(0, 65535, H * W).round().astype(np.uint16).reshape(H, W)


def _grey(values, channels):
    return np.repeat(np.asarray(values, np.float32)[None], channels, axis=0)


def _expected_8bit(img, channels):
    """PIL's own colour conversion (its definition of e.g. CMYK -> RGB), scaled by 1/255."""
    if img.mode in ds._CONVERT_VIA:                 # Pillow has no direct conversion
        img = img.convert(ds._CONVERT_VIA[img.mode])
    arr = np.asarray(img.convert("L" if channels == 1 else "RGB"), np.float32) / 255
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _image(mode):
    """An image of ``mode`` with known values, and its expected arrays per channel count."""
    rng = np.random.RandomState(len(mode))
    if mode in ("I;16", "I;16L", "I;16N", "I;16B", "I"):
        v = _ramp16()
        if mode == "I":
            img = Image.fromarray(v.astype(np.int32))
        else:
            raw = v.astype(">u2" if mode == "I;16B" else "<u2").tobytes()
            img = Image.frombytes(mode, (W, H), raw)
        assert img.mode == mode
        return img, {c: _grey(v / 65535.0, c) for c in (1, 3)}
    if mode == "F":
        v = np.array([[-1.5, 0.25, 3.0, 0.0]] * H, np.float32)
        return Image.fromarray(v, mode="F"), {c: _grey(v, c) for c in (1, 3)}
    if mode == "1":
        v = rng.rand(H, W) > 0.5
        return Image.fromarray(v), {c: _grey(v.astype(np.float32), c) for c in (1, 3)}
    if mode == "L":
        v = rng.randint(0, 256, (H, W)).astype(np.uint8)
        return Image.fromarray(v, "L"), {c: _grey(v / 255.0, c) for c in (1, 3)}
    if mode == "RGB":
        v = rng.randint(0, 256, (H, W, 3)).astype(np.uint8)
        exp3 = v.transpose(2, 0, 1) / 255.0
        # ITU-R 601-2 luma in Pillow's fixed point: (19595 R + 38470 G + 7471 B + 2^15) >> 16
        w = v.astype(np.int64)
        lum = (w[..., 0] * 19595 + w[..., 1] * 38470 + w[..., 2] * 7471 + 0x8000) >> 16
        return Image.fromarray(v, "RGB"), {3: exp3, 1: lum[None] / 255.0}
    if mode == "RGBA":
        v = rng.randint(0, 256, (H, W, 4)).astype(np.uint8)
        return Image.fromarray(v, "RGBA"), {3: v[..., :3].transpose(2, 0, 1) / 255.0}
    if mode == "P":
        img = Image.new("P", (W, H))
        img.putpalette([0, 0, 0, 255, 128, 0, 10, 20, 30] + [0] * (3 * 253))
        idx = rng.randint(0, 3, (H, W)).astype(np.uint8)
        img.putdata(idx.reshape(-1).tolist())
        pal = np.array([[0, 0, 0], [255, 128, 0], [10, 20, 30]], np.float32)
        return img, {3: pal[idx].transpose(2, 0, 1) / 255.0}
    if mode == "CMYK":
        img = Image.new("CMYK", (W, H), (0, 0, 0, 0))             # no ink: white
        return img, {3: np.ones((3, H, W), np.float32), 1: np.ones((1, H, W), np.float32)}
    # the other 8-bit modes: random bytes, PIL's conversion as the expected colours
    bands = len(Image.new(mode, (1, 1)).getbands())
    v = rng.randint(0, 256, (H, W, bands)).astype(np.uint8)
    img = Image.frombytes(mode, (W, H), v.tobytes())
    return img, {c: _expected_8bit(img, c) for c in (1, 3)}


def test_mode_lists_cover_pil():
    """Every mode PIL knows is either read at its depth or refused with a message (none are
    refused today: the lists cover Image.MODES)."""
    assert set(ds.IMAGE_MODES) >= set(Image.MODES)


@pytest.mark.parametrize("mode", ds.IMAGE_MODES)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_mode_at_its_depth(mode, channels):
    img, expected = _image(mode)
    got = ds.image_array(img, channels)
    assert got.dtype == np.float32 and got.shape == (channels, H, W)
    if channels in expected:
        np.testing.assert_allclose(got, expected[channels], rtol=0, atol=1e-6)
    else:                                            # the grey of PIL's RGB: same depth
        np.testing.assert_allclose(got, _expected_8bit(img, channels), rtol=0, atol=1e-6)
    if mode not in ds.MODES_FLOAT:
        assert got.min() >= 0 and got.max() <= 1


def test_16bit_ramp_file_has_mean_one_half(tmp_path):
    """A 16-bit PNG read with convert("L") was clipped to 255 (mean 0.98)."""
    p = tmp_path / "ramp16.png"
    Image.fromarray(_ramp16()).save(p)
    assert Image.open(p).mode.startswith("I")
    for channels in (1, 3):
        x = ds.load_image(str(p), ds.Preprocess(channels=channels))
        assert x.shape == (channels, H, W)
        assert abs(float(x.mean()) - 0.5) < 1e-6
        np.testing.assert_allclose(x[0].numpy(), _ramp16() / 65535.0, atol=1e-6)


def test_float_tiff_as_is_and_resized(tmp_path):
    p = tmp_path / "f.tif"
    v = np.array([[0.0, 0.5], [1.5, 2.0]], np.float32)
    Image.fromarray(v, mode="F").save(p)
    x = ds.load_image(str(p), ds.Preprocess(channels=1))
    np.testing.assert_array_equal(x[0].numpy(), v)
    # bilinear 2x2 -> 1x1 averages the four pixels: (0 + 0.5 + 1.5 + 2) / 4 = 1
    y = ds.load_image(str(p), ds.Preprocess(channels=1, size=(1, 1)))
    np.testing.assert_allclose(y.numpy(), [[[1.0]]], atol=1e-6)


def test_16bit_resize_keeps_depth(tmp_path):
    p = tmp_path / "c.png"
    Image.fromarray(np.full((4, 4), 40000, np.uint16)).save(p)
    x = ds.load_image(str(p), ds.Preprocess(channels=3, size=(2, 2)))
    np.testing.assert_allclose(x.numpy(), np.full((3, 2, 2), 40000 / 65535), atol=1e-6)


def test_16bit_folder_and_16bit_big_endian_tiff(tmp_path):
    for c in ("a", "b"):
        (tmp_path / "data" / c).mkdir(parents=True)
        Image.fromarray(_ramp16()).save(tmp_path / "data" / c / "x.png")
    data = ds.ImageFolderData(str(tmp_path / "data"), ds.Preprocess(channels=1))
    x, y = data.batch(0, 2)
    assert y.tolist() == [0, 1] and abs(float(x.mean()) - 0.5) < 1e-6
    p = tmp_path / "b.tif"
    Image.frombytes("I;16B", (W, H), _ramp16().astype(">u2").tobytes()).save(p)
    np.testing.assert_allclose(ds.load_image(str(p), ds.Preprocess(channels=1))[0].numpy(),
                               _ramp16() / 65535.0, atol=1e-6)


@pytest.mark.parametrize("values,message", [
    (np.array([[0, 70000]], np.int32), "outside the 16-bit range"),
    (np.array([[-1, 5]], np.int32), "outside the 16-bit range"),
    (np.array([[0.0, np.nan]], np.float32), "NaN or infinite"),
    (np.array([[0.0, np.inf]], np.float32), "NaN or infinite"),
])
def test_out_of_range_deep_images_refused(tmp_path, values, message):
    p = tmp_path / "bad.tif"
    Image.fromarray(values).save(p)
    with pytest.raises(InputError, match=f"cannot read image .*bad.tif: .*{message}"):
        ds.load_image(str(p), ds.Preprocess(channels=1))


def test_unknown_mode_refused():
    class Odd:
        mode = "BGR;15"
    with pytest.raises(ValueError, match="image mode 'BGR;15' is not supported"):
        ds.image_array(Odd())


def test_8bit_unchanged(tmp_path):
    """8-bit files give the same tensors as before (resized in 8 bits, then / 255)."""
    rng = np.random.RandomState(0)
    v = rng.randint(0, 256, (6, 6, 3)).astype(np.uint8)
    p = tmp_path / "a.png"
    Image.fromarray(v).save(p)
    got = ds.load_image(str(p), ds.Preprocess(size=(3, 3)))
    want = np.asarray(Image.fromarray(v).resize((3, 3), Image.BILINEAR), np.float32) / 255
    torch.testing.assert_close(got, torch.from_numpy(want.transpose(2, 0, 1).copy()))
