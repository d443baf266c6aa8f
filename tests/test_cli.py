"""The lrp-ext command line, run in-process (main()) and as real processes (exit codes,
kills, torchrun)."""
import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from lrp_ext.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ["demo", "explain", "explain-dataset", "evaluate", "bench"]


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def _run(args, timeout=180, **env):
    return subprocess.run([sys.executable, "-m", "lrp_ext"] + [str(a) for a in args],
                          capture_output=True, text=True, timeout=timeout, env=_env(**env))


def _tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 3)).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    model = _tiny_model()
    torch.save(model, d / "model.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)     # TorchScript's deprecation notice
        torch.jit.save(torch.jit.script(model), d / "model_ts.pt")
    torch.save(model.state_dict(), d / "state.pt")
    rng = np.random.RandomState(0)
    for c in ("cat", "dog"):
        for i in range(20):
            p = d / "folder" / c / f"{i:02d}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.randint(0, 256, (6, 6, 3), dtype=np.uint8)).save(p)
    Image.fromarray(rng.randint(0, 256, (6, 6, 3), dtype=np.uint8)).save(d / "a.png")
    Image.fromarray(rng.randint(0, 256, (5, 5, 3), dtype=np.uint8)).save(d / "small.png")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    torch.save(torch.rand(2, 3, 6, 6), d / "batch.pt")
    # a slow copy of the model (for the kill test): module:factory spec
    (d / "slowmodel.py").write_text(textwrap.dedent(f"""
        import time, torch
        class Slow(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = torch.load({str(d / 'model.pt')!r}, weights_only=False)
            def forward(self, x):
                time.sleep(0.15)
                return self.inner(x)
        def factory():
            return Slow()
    """))
    return d


def _grad_x_input(model, x):
    x = x.clone().requires_grad_(True)
    y = model(x)
    y.gather(1, y.argmax(1, keepdim=True)).sum().backward()
    return (x.grad * x).detach()


# --------------------------------------------------------------------------- help
@pytest.mark.parametrize("cmd", COMMANDS)
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert f"lrp-ext {cmd}" in capsys.readouterr().out


def test_module_entry_point_help():
    r = _run(["--help"])
    assert r.returncode == 0 and all(c in r.stdout for c in COMMANDS)


# --------------------------------------------------------------------------- explain
def test_explain_image_and_tensor_inputs(files, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["explain", "--model", files / "model.pt", "--input", files / "a.png",
               files / "batch.pt", "--composite", "gradient_x_input", "--out", out])
    assert rc == 0
    rel = np.load(out / "relevance-gradient_x_input.npy")
    x = torch.cat([torch.from_numpy(np.asarray(Image.open(files / "a.png"), np.float32) / 255)
                   .permute(2, 0, 1)[None], torch.load(files / "batch.pt")])
    np.testing.assert_allclose(rel, _grad_x_input(_tiny_model(), x).numpy(), rtol=1e-4,
                               atol=1e-6)
    summary = json.loads((out / "explain.json").read_text())
    assert summary["names"] == ["a", "batch-0", "batch-1"]
    for n in summary["names"]:
        assert Image.open(out / f"{n}.png").size[0] > 6
    assert "target" in capsys.readouterr().out


def test_explain_torchscript_and_pt_format(files, tmp_path):
    out = tmp_path / "o"
    assert main(["explain", "--model", files / "model_ts.pt", "--input", files / "batch.pt",
                 "--composite", "gradient_x_input", "--format", "pt", "--out", out]) == 0
    rel = torch.load(out / "relevance-gradient_x_input.pt")
    torch.testing.assert_close(rel, _grad_x_input(_tiny_model(), torch.load(files / "batch.pt")),
                               rtol=1e-4, atol=1e-6)


def test_explain_lrp_composites_match_zennit(files, tmp_path):
    """The relevance fed in is one-hot times the target logit; checked against zennit."""
    zennit = pytest.importorskip("zennit")
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonGammaBox, EpsilonPlus
    out = tmp_path / "o"
    assert main(["explain", "--model", files / "model.pt", "--input", files / "batch.pt",
                 "--composite", "epsilon_plus", "epsilon_gamma_box", "--out", out]) == 0
    model, x = _tiny_model(), torch.load(files / "batch.pt")
    y = model(x).detach()
    r_out = torch.zeros_like(y).scatter_(1, y.argmax(1, keepdim=True),
                                         y.gather(1, y.argmax(1, keepdim=True)))
    for name, comp in [("epsilon_plus", EpsilonPlus()),
                       ("epsilon_gamma_box", EpsilonGammaBox(low=x.amin().item(),
                                                             high=x.amax().item()))]:
        with Gradient(model, comp) as attr:
            _, ref = attr(x, r_out)
        np.testing.assert_allclose(np.load(out / f"relevance-{name}.npy"), ref.numpy(),
                                   rtol=1e-4, atol=1e-5)
    assert zennit


def test_explain_torchvision_name_random_weights(files, tmp_path, capsys):
    pytest.importorskip("torchvision")
    out = tmp_path / "o"
    assert main(["explain", "--model", "resnet18", "--input", str(files / "a.png"), "--imagenet",
                 "--resize", "32", "--composite", "epsilon_plus", "--out", str(out)]) == 0
    assert "weights=None" in capsys.readouterr().out
    rel = np.load(out / "relevance-epsilon_plus.npy")
    assert rel.shape == (1, 3, 32, 32) and np.isfinite(rel).all() and np.abs(rel).sum() > 0


BAD = [
    (["--model", "{d}/missing.pt", "--input", "{d}/a.png"], "unknown model '.*missing.pt'"),
    (["--model", "no_such_net", "--input", "{d}/a.png"], "unknown model 'no_such_net'"),
    (["--model", "no_such_module_x:make", "--input", "{d}/a.png"], "cannot import module"),
    (["--model", "{d}/state.pt", "--input", "{d}/a.png"], "state_dict"),
    (["--model", "{d}/a.png", "--input", "{d}/a.png"], "cannot load model file"),
    (["--model", "{d}/model.pt", "--input", "{d}/broken.png"], "cannot read image .*broken.png"),
    (["--model", "{d}/model.pt", "--input", "{d}/nothere.png"], "input file not found"),
    (["--model", "{d}/model.pt", "--input", "{d}/small.png"],
     "model rejected an input of shape \\(1, 3, 5, 5\\)"),
    (["--model", "{d}/model.pt", "--input", "{d}/a.png", "--channels", "1"],
     "model rejected an input of shape \\(1, 1, 6, 6\\)"),
    (["--model", "{d}/model.pt", "--input", "{d}/a.png", "--target", "7"], "out of range"),
    (["--model", "{d}/model.pt", "--input", "{d}/a.png", "--composite", "lrp_magic"],
     "unknown composite 'lrp_magic'"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[m for _, m in BAD])
def test_explain_bad_input(files, tmp_path, capsys, args, message):
    import re
    out = tmp_path / "out"
    args = [a.format(d=files) for a in args]
    rc = main(["explain"] + args + ["--composite", "gradient_x_input"] * ("--composite" not in args)
              + ["--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("lrp-ext explain: error: ")
    assert re.search(message, err), err
    assert not out.exists()            # nothing (half-)written


def test_bad_input_exit_code_and_no_traceback(files, tmp_path):
    r = _run(["explain", "--model", files / "model.pt", "--input", files / "broken.png",
              "--out", tmp_path / "o"])
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "broken.png" in r.stderr and not (tmp_path / "o").exists()
    r = _run(["explain", "--model", files / "model.pt"])          # argparse: missing options
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--input" in r.stderr


# --------------------------------------------------------------------------- explain-dataset
DS_ARGS = ["--composite", "gradient_x_input", "--batch-size", "4", "--shard-size", "8",
           "--no-progress"]


def _ds(files, out, model=None, **env):
    return _run(["explain-dataset", "--model", model or files / "model.pt",
                 "--data", files / "folder", "--out", out] + DS_ARGS, **env)


def test_explain_dataset_top_k_cli(files, tmp_path):
    out = tmp_path / "topk"
    r = _run(["explain-dataset", "--model", files / "model.pt", "--data", files / "folder",
              "--out", out, "--composite", "epsilon_plus_flat", "--batch-size", "4",
              "--shard-size", "8", "--no-progress", "--top-k", "2"])
    assert r.returncode == 0, r.stderr
    from lrp_ext.cli.dataset import load_relevance
    rel = load_relevance(out)
    assert rel.shape == (40, 2, 3, 6, 6) and np.isfinite(rel).all()
    meta = json.load(open(out / "shards" / "meta-00000.json"))
    assert len(meta["targets"][0]) == 2 and meta["targets"][0][0] != meta["targets"][0][1]
    r = _run(["explain-dataset", "--model", files / "model.pt", "--data", files / "folder",
              "--out", tmp_path / "x", "--top-k", "2", "--target", "1", "--no-progress"])
    assert r.returncode != 0 and "exclude each other" in r.stderr
    r = _run(["explain-dataset", "--model", files / "model.pt", "--data", files / "folder",
              "--out", tmp_path / "y", "--top-k", "4", "--no-progress"])
    assert r.returncode != 0 and "exceeds" in r.stderr


def _tree(d):
    res = {}
    for root, _, fs in os.walk(d):
        for f in fs:
            p = os.path.join(root, f)
            res[os.path.relpath(p, d)] = open(p, "rb").read()
    return res


@pytest.fixture(scope="module")
def reference_run(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    r = _ds(files, out)
    assert r.returncode == 0, r.stderr
    return out


def test_explain_dataset_output(files, reference_run):
    tree = _tree(reference_run)
    assert sorted(tree) == sorted([".lock", "index.json", "run.json"]
                                  + [f"shards/relevance-{s:05d}.npy" for s in range(5)]
                                  + [f"shards/meta-{s:05d}.json" for s in range(5)])
    from lrp_ext.cli.dataset import load_index, load_relevance
    index = load_index(reference_run)
    assert index["num_samples"] == 40 and [s["start"] for s in index["shards"]] == [0, 8, 16,
                                                                                 24, 32]
    meta = json.loads(tree["shards/meta-00004.json"])
    assert meta["sources"][0] == os.path.join("dog", "12.png") and meta["labels"] == [1] * 8
    names = sorted((files / "folder").glob("*/*.png"))
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(p), np.float32) / 255)
                     .permute(2, 0, 1) for p in names])
    np.testing.assert_allclose(load_relevance(reference_run), _grad_x_input(_tiny_model(), x),
                               rtol=1e-4, atol=1e-6)


def test_explain_dataset_exit_midway_then_resume_is_identical(files, reference_run, tmp_path):
    out = tmp_path / "out"
    r = _ds(files, out, LRP_EXT_EXIT_AFTER_SHARDS="2")
    assert r.returncode == 3                             # os._exit: no clean-up at all
    done = sorted(p.name for p in (out / "shards").iterdir())
    assert done == ["meta-00000.json", "meta-00001.json", "relevance-00000.npy",
                    "relevance-00001.npy"]
    assert not (out / "index.json").exists()
    # what a kill during a write leaves: a stray temporary file and a shard without its .npy
    (out / "shards" / ".relevance-00002.npy.99999.tmp").write_bytes(b"partial")
    (out / "shards" / "meta-00002.json").write_bytes(b"{}")
    r = _ds(files, out)
    assert r.returncode == 0, r.stderr
    assert _tree(out) == _tree(reference_run)


def test_explain_dataset_sigkill_then_resume_is_identical(files, reference_run, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "lrp_ext", "explain-dataset", "--model", "slowmodel:factory",
           "--data", str(files / "folder"), "--out", str(out)] + DS_ARGS
    p = subprocess.Popen(cmd, cwd=files, env=_env(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        if (out / "shards").exists() and any(f.name.startswith("relevance")
                                              for f in (out / "shards").iterdir()):
            break
        time.sleep(0.02)
    assert p.poll() is None, p.stderr.read().decode()
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    p.stderr.close()
    assert not (out / "index.json").exists()
    n_done = len([f for f in (out / "shards").iterdir() if f.name.startswith("relevance")])
    assert 1 <= n_done < 5
    r = subprocess.run(cmd, cwd=files, env=_env(), capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    ref, got = _tree(reference_run), _tree(out)
    shards = sorted(k for k in ref if k.startswith("shards/"))
    assert sorted(k for k in got if k.startswith("shards/")) == shards
    assert all(got[k] == ref[k] for k in shards)         # the wrapper computes the same model


def test_explain_dataset_refuses_other_settings(files, reference_run, tmp_path):
    import shutil
    out = tmp_path / "copy"
    shutil.copytree(reference_run, out)
    r = _run(["explain-dataset", "--model", files / "model.pt", "--data", files / "folder",
              "--out", out, "--composite", "gradient_x_input", "--batch-size", "8",
              "--shard-size", "8", "--no-progress"])
    assert r.returncode == 2 and "other settings (batch_size)" in r.stderr
    assert _tree(out) == _tree(reference_run)


def test_explain_dataset_torchrun_two_processes(files, reference_run, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "lrp_ext", "explain-dataset", "--model", str(files / "model.pt"), "--data",
           str(files / "folder"), "--out", str(out)] + DS_ARGS
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    assert _tree(out) == _tree(reference_run)            # same files as one process


def test_explain_dataset_bad_input(files, tmp_path, capsys):
    rc = main(["explain-dataset", "--model", str(files / "model.pt"), "--data",
               str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "data path not found" in capsys.readouterr().err
    rc = main(["explain-dataset", "--model", str(files / "model.pt"), "--data",
               str(files / "batch.pt"), "--out", str(tmp_path / "o"), "--channels", "1",
               "--shard-size", "6", "--batch-size", "4"])
    assert rc == 2 and "multiple of --batch-size" in capsys.readouterr().err
    torch.save(torch.rand(4, 1, 6, 6), tmp_path / "grey.pt")
    rc = main(["explain-dataset", "--model", str(files / "model.pt"), "--data",
               str(tmp_path / "grey.pt"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "rejected an input of shape (1, 1, 6, 6)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_explain_dataset_unreadable_image_midway(files, tmp_path, capsys):
    import shutil
    data = tmp_path / "folder"
    shutil.copytree(files / "folder", data)
    (data / "dog" / "15.png").write_bytes(b"garbage")          # sample 35: in shard 4
    out = tmp_path / "o"
    rc = main(["explain-dataset", "--model", str(files / "model.pt"), "--data", str(data),
               "--out", str(out)] + DS_ARGS)
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "cannot read image" in err and "15.png" in err and "rerun to resume" in err
    assert sorted(p.name for p in (out / "shards").iterdir() if p.suffix == ".npy") == [
        f"relevance-{s:05d}.npy" for s in range(4)]
    assert not (out / "index.json").exists()
    assert not [p for p in (out / "shards").iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------- demo + evaluate
@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    return out


def test_demo_quick(demo_dir, capsys):
    for f in ("heatmaps.png", "evaluation.png", "evaluation.csv", "digits_cnn.pt",
              "digits_test.pt"):
        assert (demo_dir / f).stat().st_size > 0, f
    img = Image.open(demo_dir / "heatmaps.png")
    assert img.size[0] > 10 * 96 and img.size[1] > 5 * 96       # 2 x 5 digits x (input + 4 maps)
    model = torch.load(demo_dir / "digits_cnn.pt", weights_only=False)
    test = torch.load(demo_dir / "digits_test.pt")
    acc = (model(test["x"]).argmax(1) == test["y"]).float().mean().item()
    assert acc > 0.7                                   # 2 epochs: already well above chance


def test_evaluate_bad_options(demo_dir, capsys):
    base = ["evaluate", "--model", str(demo_dir / "digits_cnn.pt"), "--data",
            str(demo_dir / "digits_test.pt")]
    for bad, message in ((["--steps", "0"], "argument --steps: must be an integer >= 1"),
                         (["--baseline", "blur"], "argument --baseline: must be a finite number,"
                                                  " 'mean' or 'uniform', got 'blur'")):
        with pytest.raises(SystemExit) as e:                 # argparse's exit
            main(base + bad)
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_evaluate_lrp_beats_random(demo_dir, tmp_path, capsys):
    out = tmp_path / "ev"
    rc = main(["evaluate", "--model", str(demo_dir / "digits_cnn.pt"), "--data",
               str(demo_dir / "digits_test.pt"), "--composite", "epsilon_gamma_box",
               "epsilon_plus", "--max-samples", "60", "--steps", "8", "--out", str(out)])
    assert rc == 0
    assert (out / "evaluation.png").read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader(open(out / "evaluation.csv")))
    summary = {r["method"]: r for r in rows}
    assert set(summary) == {"epsilon_gamma_box", "epsilon_plus", "gradient_x_input", "random"}
    rnd = summary["random"]
    for m in ("epsilon_gamma_box", "epsilon_plus"):
        assert float(summary[m]["aopc_morf"]) > 1.3 * float(rnd["aopc_morf"])
        assert float(summary[m]["abpc"]) > float(rnd["abpc"]) + 3.0
    assert "AOPC MoRF" in capsys.readouterr().out


# --------------------------------------------------------------------------- bench
def test_bench_runs_scripts_and_passes_arguments(tmp_path, capfd):
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    for name in ("bench_layers.py", "bench_models.py"):
        (bench / name).write_text("import importlib.util, sys\n"
                                  "assert importlib.util.find_spec('lrp_ext')\n"
                                  f"print('{name}', sys.argv[1:])\n")
    rc = main(["bench", "--quick", "--bench-dir", str(bench), "--repeat", "3"])
    out = capfd.readouterr().out
    assert rc == 0
    assert "bench_layers.py ['--quick', '--repeat', '3']" in out
    assert "bench_models.py ['--quick', '--repeat', '3']" in out
    (bench / "bench_models.py").write_text("import sys; sys.exit(5)\n")
    assert main(["bench", "--only", "models", "--bench-dir", str(bench)]) == 5
    rc = main(["bench", "--bench-dir", str(tmp_path / "nowhere")])
    assert rc == 2 and "benchmark script not found" in capfd.readouterr().err
