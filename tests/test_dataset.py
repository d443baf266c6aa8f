import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from lrp_ext.cli import dataset as ds
from lrp_ext.cli.models import InputError, attribute


def _png(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(arr, np.uint8)).save(path)


def test_load_image_rgb_grey_resize_normalise(tmp_path):
    arr = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3) * 4
    _png(tmp_path / "a.png", arr)
    x = ds.load_image(str(tmp_path / "a.png"), ds.Preprocess())
    assert x.shape == (3, 4, 5)
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), arr / 255.0, atol=1e-7)
    g = ds.load_image(str(tmp_path / "a.png"), ds.Preprocess(channels=1, size=(2, 3)))
    assert g.shape == (1, 2, 3)
    prep = ds.Preprocess(mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    xn = ds.load_image(str(tmp_path / "a.png"), prep)
    np.testing.assert_allclose(xn[1].numpy(), (arr[..., 1] / 255.0 - 0.5) / 0.5, atol=1e-6)
    low, high = prep.bounds()
    np.testing.assert_allclose(low.flatten().numpy(), [-2, -1, -0.5])
    np.testing.assert_allclose(high.flatten().numpy(), [2, 1, 0.5])
    np.testing.assert_allclose(prep.denormalize(xn).numpy(), x.numpy(), atol=1e-6)


def test_bad_images_and_files(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="cannot read image .*bad.png"):
        ds.load_image(str(bad), ds.Preprocess())
    with pytest.raises(InputError, match="not found"):
        ds.load_inputs([str(tmp_path / "nope.png")], ds.Preprocess())
    with pytest.raises(InputError, match="--std"):
        ds.Preprocess(std=(0.0,)).bounds()
    torch.save({"weights": torch.ones(2)}, tmp_path / "d.pt")
    with pytest.raises(InputError, match="without an 'x'"):
        ds.load_tensor_file(str(tmp_path / "d.pt"))
    torch.save({"x": torch.ones(3, 2), "y": torch.zeros(2)}, tmp_path / "e.pt")
    with pytest.raises(InputError, match="3 inputs but 2 labels"):
        ds.load_tensor_file(str(tmp_path / "e.pt"))


def test_tensor_file_forms(tmp_path):
    x = torch.randn(5, 2, 3)
    y = torch.arange(5)
    for i, obj in enumerate([x, {"x": x, "y": y}, (x, y)]):
        torch.save(obj, tmp_path / f"t{i}.pt")
        xx, yy = ds.load_tensor_file(str(tmp_path / f"t{i}.pt"))
        assert torch.equal(xx, x)
        assert (yy is None) if i == 0 else torch.equal(yy, y)
    np.save(tmp_path / "t.npy", x.numpy())
    xx, _ = ds.load_tensor_file(str(tmp_path / "t.npy"))
    assert torch.equal(xx, x)
    xs, names = ds.load_inputs([str(tmp_path / "t.npy"), str(tmp_path / "t0.pt")], ds.Preprocess())
    assert xs.shape == (10, 2, 3) and names[0] == "t-0" and names[5] == "t0-0"


def test_image_folder_order_and_labels(tmp_path):
    for c in ("b", "a"):
        for f in ("2.png", "10.png", "1.jpg"):
            _png(tmp_path / c / f, np.full((3, 3, 3), 7))
    (tmp_path / "a" / "notes.txt").write_text("skip me")
    data = ds.open_dataset(str(tmp_path), ds.Preprocess())
    assert data.classes == ["a", "b"] and len(data) == 6
    assert data.sources(0, 3) == ["a/1.jpg", "a/10.png", "a/2.png"]
    x, y = data.batch(2, 5)
    assert x.shape == (3, 3, 3, 3) and y.tolist() == [0, 1, 1]
    _png(tmp_path / "b" / "big.png", np.zeros((5, 5, 3)))
    data = ds.open_dataset(str(tmp_path), ds.Preprocess())
    with pytest.raises(InputError, match="differ in size"):
        data.batch(0, len(data))
    with pytest.raises(InputError, match="no class sub-folders"):
        ds.open_dataset(str(tmp_path / "a"), ds.Preprocess())


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    p = tmp_path / "f.bin"

    def boom(fh):
        fh.write(b"half")
        raise RuntimeError("disk on fire")
    with pytest.raises(RuntimeError):
        ds.atomic_write(str(p), boom)
    assert os.listdir(tmp_path) == []
    ds.atomic_write(str(p), b"whole")
    assert p.read_bytes() == b"whole" and os.listdir(tmp_path) == ["f.bin"]
    with pytest.raises(ValueError):
        with ds.atomic_path(str(tmp_path / "g.png")) as tmp:
            open(tmp, "wb").write(b"x")
            raise ValueError
    assert os.listdir(tmp_path) == ["f.bin"]


def _tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.ReLU(),
                               torch.nn.Linear(8, 3)).eval()


def test_explain_dataset_in_process_and_resume(tmp_path):
    model = _tiny_model()
    x = torch.randn(23, 3, 2, 2)
    torch.save({"x": x, "y": torch.arange(23) % 3}, tmp_path / "d.pt")
    data = ds.open_dataset(str(tmp_path / "d.pt"), ds.Preprocess())
    out = str(tmp_path / "out")
    kw = dict(method="gradient_x_input", config={}, batch_size=2, shard_size=6, progress=False)
    assert ds.explain_dataset(model, data, out, **kw) == 4
    ds.write_index(out, len(data), 6, {})
    rel = ds.load_relevance(out)
    # independent oracle: gradient of the predicted logit times the input
    xg = x.clone().requires_grad_(True)
    y = model(xg)
    y.gather(1, y.argmax(1, keepdim=True)).sum().backward()
    np.testing.assert_allclose(rel, (xg.grad * x).numpy(), rtol=1e-5, atol=1e-6)
    meta = json.load(open(os.path.join(out, "shards", "meta-00003.json")))
    assert meta["start"] == 18 and meta["stop"] == 23 and meta["labels"] == [0, 1, 2, 0, 1]
    assert meta["sources"][0] == "d.pt[18]"
    # a second call finds every shard and computes nothing
    mtimes = {f: os.stat(os.path.join(out, "shards", f)).st_mtime_ns
              for f in os.listdir(os.path.join(out, "shards"))}
    assert ds.explain_dataset(model, data, out, **kw) == 0
    assert mtimes == {f: os.stat(os.path.join(out, "shards", f)).st_mtime_ns
                      for f in os.listdir(os.path.join(out, "shards"))}
    # a shard whose .npy is missing (killed between the two renames) is recomputed
    os.unlink(os.path.join(out, "shards", "relevance-00001.npy"))
    assert ds.explain_dataset(model, data, out, **kw) == 1
    np.testing.assert_array_equal(ds.load_relevance(out, mmap=False), rel)


def test_ranks_split_the_shards(tmp_path):
    model = _tiny_model()
    torch.save(torch.randn(10, 12), tmp_path / "d.pt")
    data = ds.open_dataset(str(tmp_path / "d.pt"), ds.Preprocess())
    kw = dict(method="gradient_x_input", config={}, batch_size=2, shard_size=2, progress=False)
    a = ds.explain_dataset(model, data, str(tmp_path / "o"), rank=0, world_size=2, **kw)
    assert sorted(os.listdir(tmp_path / "o" / "shards"))[:3] == [
        "meta-00000.json", "meta-00002.json", "meta-00004.json"]
    with pytest.raises(InputError, match="shard 1 is missing"):
        ds.write_index(str(tmp_path / "o"), 10, 2, {})
    b = ds.explain_dataset(model, data, str(tmp_path / "o"), rank=1, world_size=2, **kw)
    assert (a, b) == (3, 2)
    ds.write_index(str(tmp_path / "o"), 10, 2, {})
    ref = attribute(model, data.x, "gradient_x_input")[0].numpy()
    np.testing.assert_allclose(ds.load_relevance(str(tmp_path / "o")), ref, rtol=1e-5, atol=1e-6)


def test_run_config_mismatch_refused(tmp_path):
    os.makedirs(tmp_path / "o")
    ds.atomic_write_json(str(tmp_path / "o" / "run.json"), {"method": "epsilon_plus", "n": 3})
    assert ds.check_run_config(str(tmp_path / "o"), {"method": "epsilon_plus", "n": 3})
    with pytest.raises(InputError, match="other settings \\(method\\)"):
        ds.check_run_config(str(tmp_path / "o"), {"method": "epsilon_gamma_box", "n": 3})
    assert not ds.check_run_config(str(tmp_path / "new"), {"method": "x"})


@pytest.mark.parametrize("method", ["epsilon_plus_flat", "epsilon_gamma_box", "gradient_x_input",
                                    "random"])
def test_explain_dataset_top_k(tmp_path, method):
    """--top-k: each sample's K highest-scoring classes from one call; relevance (N, K, ...),
    targets and scores per class; equal to explaining each of those classes on its own (z^B
    on a first conv layer: its bounds per sample, for every class)."""
    model = _tiny_model()
    if method == "epsilon_gamma_box":
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU(),
                                    torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    x = torch.randn(10, 3, 2, 2)
    torch.save({"x": x, "y": torch.arange(10) % 3}, tmp_path / "d.pt")
    data = ds.open_dataset(str(tmp_path / "d.pt"), ds.Preprocess())
    out = str(tmp_path / "out")
    config = {"sample_shape": [3, 2, 2], "top_k": 2}
    kw = dict(method=method, config=config, batch_size=2, shard_size=4, progress=False, top_k=2,
              low=-4.0, high=4.0)
    assert ds.explain_dataset(model, data, out, **kw) == 3
    ds.write_index(out, len(data), 4, config)
    rel = ds.load_relevance(out)
    assert rel.shape == (10, 2, 3, 2, 2)
    with torch.no_grad():
        y = model(x)
    top = y.topk(2, dim=1).indices
    meta = json.load(open(os.path.join(out, "shards", "meta-00000.json")))
    assert meta["targets"] == top[:4].tolist()
    np.testing.assert_allclose(meta["scores"], y.gather(1, top)[:4].numpy(), rtol=1e-6)
    assert np.asarray(meta["relevance_sums"]).shape == (4, 2)
    if method == "random":
        return
    for k in range(2):
        want, _, _ = attribute(model, x, method, target=top[:, k], low=-4.0, high=4.0)
        np.testing.assert_allclose(rel[:, k], want.numpy(), rtol=1e-5, atol=1e-6)
    # a shard of the wrong shape (a run without --top-k) is found damaged
    assert ds.check_shard(out, 0, 10, 4, [3, 2, 2]) is not None
    assert ds.check_shard(out, 0, 10, 4, ds.relevance_shape(config)) is None
    with pytest.raises(InputError, match="exceeds"):
        attribute(model, x, method, top_k=4)
