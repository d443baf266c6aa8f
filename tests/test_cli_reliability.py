"""The command line under hostile use: every bad option of every command, damaged shards,
two runs into one folder, resuming at another thread count."""
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from lrp_ext.cli import dataset as ds
from lrp_ext.cli import main

from test_cli import DS_ARGS, _env, _run, _tree, files, reference_run  # noqa: F401


def _main(argv):
    """main()'s exit code, argparse's SystemExit included."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:
        return e.code


def _snapshot(*dirs):
    return {d: sorted(os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d)
                      for f in fs) for d in dirs}


@pytest.fixture
def one_thread():
    """The thread count the reference run was made with (OMP_NUM_THREADS=1)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def bad_files(files):
    np.save(files / "empty.npy", np.zeros((0, 3, 6, 6), np.float32))
    x = np.random.RandomState(0).rand(2, 3, 6, 6).astype(np.float32)
    x[1, 0, 2, 2] = np.nan
    np.save(files / "nan.npy", x)
    (files / "nofinish").mkdir(exist_ok=True)
    (files / "nanmodel.py").write_text(
        "import torch\n"
        "class NaNOut(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return x.flatten(1)[:, :3] * float('nan')\n")
    return files


# --------------------------------------------------------------------------- every bad option
EXPLAIN = ["explain", "--model", "{d}/model.pt", "--input", "{d}/a.png", "--out", "{o}",
           "--composite", "gradient_x_input"]
DATASET = ["explain-dataset", "--model", "{d}/model.pt", "--data", "{d}/folder", "--out", "{o}"
           ] + DS_ARGS
EVALUATE = ["evaluate", "--model", "{d}/model.pt", "--data", "{d}/batch.pt", "--out", "{o}",
            "--composite", "epsilon_plus", "--max-samples", "2", "--steps", "2"]
DEMO = ["demo", "--quick", "--out", "{o}"]

BAD_OPTIONS = [
    # demo: checked before the model is trained
    (DEMO + ["--cmap", "notacmap"], "unknown colour map 'notacmap'"),
    (DEMO + ["--eval-samples", "-5"], "--eval-samples: must be an integer >= 1, got '-5'"),
    (DEMO + ["--epochs", "0"], "--epochs: must be an integer >= 1"),
    (DEMO + ["--seed", "-1"], "--seed: must be an integer in [0, 2**32)"),
    (DEMO + ["--out", "{d}/a.png"], "exists and is not a folder"),
    # explain
    (EXPLAIN + ["--cmap", "notacmap"], "unknown colour map 'notacmap'"),
    (EXPLAIN + ["--input", "{d}/empty.npy"], "empty.npy holds no samples"),
    (EXPLAIN + ["--input", "{d}/nan.npy"], "nan.npy: inputs hold NaN or infinite values"),
    (EXPLAIN + ["--model", "{d}/model_ts.pt", "--composite", "epsilon_plus"],
     "composite epsilon_plus needs a model torch.fx can trace"),
    (EXPLAIN + ["--low", "nan"], "--low: must be a finite number, got 'nan'"),
    (EXPLAIN + ["--high", "inf"], "--high: must be a finite number, got 'inf'"),
    (EXPLAIN + ["--low", "2", "--high", "1"], "--low (2.0) must be below --high (1.0)"),
    (EXPLAIN + ["--target", "10"], "out of range for a model with 3 outputs"),
    (EXPLAIN + ["--target", "-1"], "--target: must be an integer >= 0"),
    (EXPLAIN + ["--channels", "1", "--mean", "0.1", "0.2"],
     "--mean takes 1 value for 1-channel images (--channels 1), got 2"),
    (EXPLAIN + ["--mean", "0.1", "0.2"], "--mean takes 1 or 3 values for 3-channel images"),
    (EXPLAIN + ["--std", "0"], "--std values must be positive"),
    (EXPLAIN + ["--mean", "nan"], "--mean: must be a finite number"),
    (EXPLAIN + ["--resize", "0"], "--resize: must be an integer >= 1"),
    (EXPLAIN + ["--device", "nonsense"], "unknown device 'nonsense'"),
    (EXPLAIN + ["--composite", "lrp_magic"], "unknown composite 'lrp_magic'"),
    (EXPLAIN + ["--format", "xyz"], "invalid choice: 'xyz'"),
    (EXPLAIN + ["--out", "{d}/a.png"], "exists and is not a folder"),
    (EXPLAIN + ["--model", "nanmodel:NaNOut"], "output holds NaN or infinite values"),
    # explain-dataset: nothing written, not even run.json
    (DATASET + ["--target", "10"], "out of range for a model with 3 outputs"),
    (DATASET + ["--low", "nan"], "--low: must be a finite number"),
    (DATASET + ["--batch-size", "0"], "--batch-size: must be an integer >= 1"),
    (DATASET + ["--shard-size", "6"], "must be a multiple of --batch-size"),
    (DATASET + ["--model", "{d}/model_ts.pt", "--composite", "epsilon_plus"],
     "needs a model torch.fx can trace"),
    (DATASET + ["--data", "{d}/empty.npy"], "holds no samples"),
    (DATASET + ["--data", "{d}/nan.npy"], "NaN or infinite"),
    (["explain-dataset", "--data", "{d}/folder", "--out", "{o}"],
     "the following arguments are required: --model"),
    (["explain-dataset", "--verify", "{d}/nofinish", "--model", "{d}/model.pt"],
     "--verify checks a finished run and takes no --model"),
    (["explain-dataset", "--verify", "{o}"], "is not a folder"),
    (["explain-dataset", "--verify", "{d}/nofinish"], "holds no index.json"),
    # evaluate
    (EVALUATE + ["--baseline", "nan"], "--baseline: must be a finite number, 'mean' or"),
    (EVALUATE + ["--steps", "0"], "--steps: must be an integer >= 1"),
    (EVALUATE + ["--patch-size", "0"], "--patch-size: must be an integer >= 1"),
    (EVALUATE + ["--max-samples", "-1"], "--max-samples: must be an integer >= 0"),
    (EVALUATE + ["--batch-size", "0"], "--batch-size: must be an integer >= 1"),
    (EVALUATE + ["--seed", "-1"], "--seed: must be an integer in [0, 2**32)"),
    (EVALUATE + ["--low", "nan"], "--low: must be a finite number"),
    (EVALUATE + ["--target", "10"], "out of range"),
    (EVALUATE + ["--model", "{d}/model_ts.pt"], "needs a model torch.fx can trace"),
    (EVALUATE + ["--score", "x"], "invalid choice: 'x'"),
    (EVALUATE + ["--data", "{d}/nan.npy"], "NaN or infinite"),
    # bench
    (["bench", "--only", "x"], "invalid choice: 'x'"),
    (["bench", "--bench-dir", "{o}"], "benchmark script not found"),
]


@pytest.mark.parametrize("argv,message", BAD_OPTIONS,
                         ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD_OPTIONS])
def test_every_bad_option(bad_files, tmp_path, monkeypatch, capsys, argv, message):
    """Exit code 2, one line on stderr naming the problem, no traceback, no new file."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(bad_files))            # module:factory specs
    out = tmp_path / "out"
    argv = [a.format(d=bad_files, o=out) for a in argv]
    before = _snapshot(tmp_path, bad_files)
    rc = _main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"lrp-ext {argv[0]}: error: ") and "Traceback" not in err
    assert message in err, err
    assert _snapshot(tmp_path, bad_files) == before and not out.exists()


@pytest.mark.parametrize("argv", [EXPLAIN + ["--cmap", "notacmap"],
                                  DEMO + ["--eval-samples", "-5"],
                                  EXPLAIN + ["--input", "{d}/empty.npy"]])
def test_bad_option_in_a_real_process(bad_files, tmp_path, argv):
    out = tmp_path / "out"
    r = _run([a.format(d=bad_files, o=out) for a in argv])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert not out.exists()


# --------------------------------------------------------------------------- damaged shards
def _nan_into(path):
    """Overwrite the last float32 of an .npy file with NaN (same length)."""
    with open(path, "r+b") as fh:
        fh.seek(-4, os.SEEK_END)
        fh.write(np.float32(np.nan).tobytes())


DAMAGE = {
    "truncated": lambda p: os.truncate(p, 100),
    "emptied": lambda p: os.truncate(p, 0),
    "nan": _nan_into,
    "bit flip in the header": lambda p: open(p, "r+b").write(b"\x00"),
}


@pytest.mark.parametrize("how", list(DAMAGE))
def test_resume_redoes_damaged_shards(files, reference_run, tmp_path, capsys, one_thread, how):
    out = tmp_path / "copy"
    shutil.copytree(reference_run, out)
    DAMAGE[how](out / "shards" / "relevance-00001.npy")
    DAMAGE[how](out / "shards" / "relevance-00003.npy")
    assert _main(["explain-dataset", "--verify", out]) == 1
    err = capsys.readouterr().err
    assert "shard 1: " in err and "shard 3: " in err and "failed verification" in err
    rc = _main(["explain-dataset", "--model", files / "model.pt", "--data", files / "folder",
                "--out", out] + DS_ARGS)
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "shard 1 is damaged" in err and "shard 3 is damaged" in err
    assert "shard 0" not in err and "recomputing it" in err
    assert _tree(out) == _tree(reference_run)
    assert _main(["explain-dataset", "--verify", out]) == 0


def test_resume_redoes_a_shard_with_a_bad_meta_file(files, reference_run, tmp_path, capsys,
                                                    one_thread):
    out = tmp_path / "copy"
    shutil.copytree(reference_run, out)
    (out / "shards" / "meta-00002.json").write_text("{}")
    rc = _main(["explain-dataset", "--model", files / "model.pt", "--data", files / "folder",
                "--out", out] + DS_ARGS)
    assert rc == 0 and "shard 2 is damaged: shards/meta-00002.json" in capsys.readouterr().err
    assert _tree(out) == _tree(reference_run)


def test_meta_carries_length_and_checksum(reference_run):
    import hashlib
    for s in range(5):
        meta = json.loads((reference_run / "shards" / f"meta-{s:05d}.json").read_text())
        data = (reference_run / "shards" / f"relevance-{s:05d}.npy").read_bytes()
        assert meta["relevance_bytes"] == len(data)
        assert meta["relevance_sha256"] == hashlib.sha256(data).hexdigest()


def test_verify_finished_run_without_the_model(reference_run, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(reference_run, out)
    os.chmod(out / "run.json", 0o644)
    assert _main(["explain-dataset", "--verify", out]) == 0
    assert "5 shard(s) verified" in capsys.readouterr().out
    # a shard replaced by another valid shard of the same run: length and checksum differ
    shutil.copy(out / "shards" / "relevance-00004.npy", out / "shards" / "relevance-00000.npy")
    (out / "shards" / "relevance-00002.npy").unlink()
    assert _main(["explain-dataset", "--verify", out]) == 1
    err = capsys.readouterr().err.splitlines()
    assert any(line.endswith("shard 0: shards/relevance-00000.npy does not match the sha256 in "
                             "its meta file") or "shard 0: shards/relevance-00000.npy has" in line
               for line in err), err
    assert any("shard 2: shards/relevance-00002.npy is missing" in line for line in err), err
    assert not (out / "shards" / "relevance-00002.npy").exists()    # verify writes nothing


def test_verify_catches_an_index_that_disagrees(reference_run, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(reference_run, out)
    index = json.loads((out / "index.json").read_text())
    index["shards"][3]["sha256"] = "0" * 64
    (out / "index.json").write_text(json.dumps(index))
    assert _main(["explain-dataset", "--verify", out]) == 1
    assert "shard 3: its relevance file does not match the sha256 in index.json" in \
        capsys.readouterr().err


# --------------------------------------------------------------------------- one run per folder
def test_second_run_into_a_busy_folder_is_refused(files, reference_run, tmp_path, capsys,
                                                  one_thread):
    out = tmp_path / "busy"
    shutil.copytree(reference_run, out)
    (out / "index.json").unlink()
    (out / "shards" / "relevance-00004.npy").unlink()
    other = out / "shards" / ".relevance-00004.npy.4242.tmp"   # another run's file in flight
    other.write_bytes(b"partial")
    fd = ds.lock_output(str(out))                               # that run holds the lock
    try:
        before = _tree(out)
        rc = _main(["explain-dataset", "--model", files / "model.pt", "--data",
                    files / "folder", "--out", out] + DS_ARGS)
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        assert "is in use by another explain-dataset run" in err
        assert _tree(out) == before and other.exists()
    finally:
        os.close(fd)
    rc = _main(["explain-dataset", "--model", files / "model.pt", "--data", files / "folder",
                "--out", out] + DS_ARGS)
    assert rc == 0
    assert not other.exists()           # with the lock ours, it is a stale temp: swept
    assert _tree(out) == _tree(reference_run)


def test_two_live_runs_into_one_folder(files, reference_run, tmp_path):
    """The second process is refused with one line; the first finishes undisturbed."""
    out = tmp_path / "out"
    (tmp_path / "slower.py").write_text(
        "import time, torch\n"
        "class Slow(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        f"        self.inner = torch.load({str(files / 'model.pt')!r}, weights_only=False)\n"
        "    def forward(self, x):\n"
        "        time.sleep(0.6)\n"
        "        return self.inner(x)\n")
    cmd = [sys.executable, "-m", "lrp_ext", "explain-dataset", "--model", "slower:Slow",
           "--data", str(files / "folder"), "--out", str(out)] + DS_ARGS
    a = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "run.json").exists():
        time.sleep(0.02)
    assert a.poll() is None
    b = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True,
                       timeout=180)
    a_alive = a.poll() is None
    a_err = a.communicate(timeout=180)[1]
    assert a_alive, "the first run ended before the second was refused: make it slower"
    assert b.returncode == 2 and b.stderr.count("\n") == 1, b.stderr
    assert "in use by another explain-dataset run" in b.stderr
    assert a.returncode == 0, a_err
    got, ref = _tree(out), _tree(reference_run)
    assert all(got[k] == ref[k] for k in ref if k.startswith("shards/"))


def test_lock_is_released_when_the_holder_is_killed(tmp_path):
    out = tmp_path / "o"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from lrp_ext.cli import dataset; "
        "dataset.lock_output(sys.argv[2]); print('held', flush=True); time.sleep(120)"),
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), str(out)],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(ds.InputError, match="in use by another"):
        ds.lock_output(str(out))
    holder.kill()
    holder.wait()
    holder.stdout.close()
    os.close(ds.lock_output(str(out)))


# --------------------------------------------------------------------------- thread count
def test_resume_at_another_thread_count_is_refused(files, reference_run, tmp_path, capsys):
    assert json.loads((reference_run / "run.json").read_text())["cpu_threads"] == 1
    out = tmp_path / "copy"
    shutil.copytree(reference_run, out)
    (out / "index.json").unlink()
    (out / "shards" / "relevance-00004.npy").unlink()
    before = _tree(out)
    args = ["explain-dataset", "--model", files / "model.pt", "--data", files / "folder",
            "--out", out] + DS_ARGS
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        rc = _main(args)
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        assert "started with 1 CPU thread(s), this process has 2: resume with " \
               "OMP_NUM_THREADS=1" in err
        assert _tree(out) == before
        torch.set_num_threads(1)
        assert _main(args) == 0
    finally:
        torch.set_num_threads(old)
    assert _tree(out) == _tree(reference_run)
