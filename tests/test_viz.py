import numpy as np
import pytest
import torch

from lrp_ext import viz


@pytest.mark.parametrize("cmap,neutral", [("bwr", (255, 255, 255)), ("seismic", (255, 255, 255)),
                                          ("coldnhot", (0, 0, 0)), ("gray", (128, 128, 128))])
def test_zero_relevance_maps_to_neutral_colour(cmap, neutral):
    r = np.zeros((3, 4))
    r[0, 0], r[1, 1] = 2.0, -1.0          # non-zero entries elsewhere set the scale
    img = viz.heatmap(r, cmap)
    assert img.dtype == np.uint8 and img.shape == (3, 4, 3)
    assert tuple(img[2, 2]) == neutral
    # an all-zero map is neutral everywhere (no division by zero)
    assert (viz.heatmap(np.zeros((2, 2)), cmap) == np.array(neutral, np.uint8)).all()


def test_sign_goes_to_the_right_side_bwr():
    r = torch.tensor([[1.0, -1.0, 0.25, -0.25]])
    img = viz.heatmap(r, "bwr").astype(int)
    assert tuple(img[0, 0]) == (255, 0, 0)          # most positive: red
    assert tuple(img[0, 1]) == (0, 0, 255)          # most negative: blue
    assert img[0, 2, 0] == 255 and img[0, 2, 2] < 255   # positive: reddish
    assert img[0, 3, 2] == 255 and img[0, 3, 0] < 255   # negative: bluish


def test_sign_goes_to_the_right_side_coldnhot_and_seismic():
    r = np.array([[1.0, -1.0, 0.5, -0.5]])
    hot = viz.heatmap(r, "coldnhot").astype(int)
    assert hot[0, 0, 0] == 255 and hot[0, 0, 2] == 0      # positive: red/yellow, no blue
    assert hot[0, 1, 2] == 255 and hot[0, 1, 0] == 0      # negative: blue/cyan, no red
    assert tuple(hot[0, 2]) == (255, 0, 0) and tuple(hot[0, 3]) == (0, 0, 255)
    sei = viz.heatmap(r, "seismic").astype(int)
    assert sei[0, 2, 0] > sei[0, 2, 2] and sei[0, 3, 2] > sei[0, 3, 0]


def test_symmetric_normalisation():
    r = np.array([[4.0, -2.0, 0.0]])
    # r / max|r| = [1, -0.5, 0]: -0.5 is halfway between blue and white
    img = viz.heatmap(r, "bwr").astype(int)
    assert tuple(img[0, 1]) == (128, 128, 255)
    assert np.array_equal(viz.heatmap(r, "bwr"), viz.heatmap(7.5 * r, "bwr"))   # scale-free
    flipped = viz.heatmap(-r, "bwr")
    assert np.array_equal(flipped[..., 0], img[..., 2])
    assert np.array_equal(flipped[..., 2], img[..., 0])
    np.testing.assert_allclose(viz.normalize(r), [[1.0, -0.5, 0.0]])
    np.testing.assert_allclose(viz.normalize(r, level=0.5), [[1.0, -1.0, 0.0]])


@pytest.mark.parametrize("cmap", ["bwr", "seismic"])
def test_builtin_maps_agree_with_matplotlib(cmap):
    mpl = pytest.importorskip("matplotlib")
    v = np.arange(256) / 255.0          # the points matplotlib tabulates its 256-entry LUT at
    ours = viz.colormap(cmap)(v)
    theirs = mpl.colormaps[cmap](v)[:, :3]
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_matplotlib_names_and_unknown_names():
    pytest.importorskip("matplotlib")
    img = viz.heatmap(np.array([[1.0, -1.0]]), "RdBu_r")
    assert img.shape == (1, 2, 3)
    with pytest.raises(ValueError, match="unknown colour map"):
        viz.heatmap(np.ones((2, 2)), "no-such-map")


def test_channel_reduction():
    r = np.zeros((3, 2, 2))
    r[0, 0, 0], r[1, 0, 0], r[2, 0, 0] = 1.0, 1.0, -0.5     # sums to 1.5
    r[0, 1, 1], r[1, 1, 1] = -3.0, 2.0                      # sums to -1, absmax keeps -3
    np.testing.assert_allclose(viz.reduce_channels(r), [[1.5, 0], [0, -1.0]])
    np.testing.assert_allclose(viz.reduce_channels(r, "absmax"), [[1.0, 0], [0, -3.0]])
    with pytest.raises(ValueError):
        viz.reduce_channels(np.zeros((2, 2, 2, 2)))


def test_overlay_and_input_image():
    x = np.linspace(0, 1, 16).reshape(1, 4, 4)
    base = viz.input_image(x)
    assert base.shape == (4, 4, 3) and base[0, 0, 0] == 0 and base[-1, -1, 0] == 255
    r = np.zeros((4, 4))
    r[0, 0] = 1.0
    over = viz.overlay(r, x, "bwr", alpha=1.0)
    assert np.array_equal(over[1:], base[1:])            # zero relevance: plain input
    assert tuple(over[0, 0]) == (255, 0, 0)              # full weight where relevance is max


def test_grid_and_save(tmp_path):
    from PIL import Image
    x = torch.rand(3, 1, 5, 5)
    rel = [torch.randn(3, 1, 5, 5), torch.randn(3, 1, 5, 5)]
    img = viz.heatmap_grid(x, rel, "coldnhot", scale=3, col_labels=["in", "a", "b"])
    pad, top = 2, 14
    assert img.shape == (top + 3 * (15 + pad) + pad, 3 * (15 + pad) + pad, 3)
    # the cell at row 1, column 2 is the upscaled heatmap of sample 1, method b
    y0, x0 = top + pad + (15 + pad), pad + 2 * (15 + pad)
    cell = img[y0:y0 + 15, x0:x0 + 15]
    np.testing.assert_array_equal(cell[::3, ::3], viz.heatmap(rel[1][1], "coldnhot"))
    p = tmp_path / "g.png"
    viz.save_image(p, img)
    assert np.array_equal(np.asarray(Image.open(p).convert("RGB")), img)
