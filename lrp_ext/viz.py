"""Relevance -> heatmap images.

Relevance is normalised symmetrically around zero (``r / max|r|``, so zero stays zero and the
sign is never flipped by the scaling), mapped to [0, 1] with zero at 0.5, and coloured:

* ``bwr``: blue (negative) - white (zero) - red (positive);
* ``seismic``: dark blue - blue - white (zero) - red - dark red;
* ``coldnhot``: cyan - blue - black (zero) - red - yellow;
* ``gray``: black (negative) - grey (zero) - white (positive);
* any other name is looked up in matplotlib when it is installed.

Everything here works on numpy arrays or torch tensors and returns ``uint8`` RGB arrays
(H, W, 3); ``save_image``/``save_grid`` write PNGs with Pillow.
"""
import numpy as np

# colour maps as evenly spaced RGB anchors from value 0 (most negative) to 1 (most positive)
_ANCHORS = {
    "bwr": [(0.0, 0.0, 1.0), (1.0, 1.0, 1.0), (1.0, 0.0, 0.0)],
    "seismic": [(0.0, 0.0, 0.3), (0.0, 0.0, 1.0), (1.0, 1.0, 1.0), (1.0, 0.0, 0.0),
                (0.5, 0.0, 0.0)],
    "coldnhot": [(0.0, 1.0, 1.0), (0.0, 0.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0),
                 (1.0, 1.0, 0.0)],
    "gray": [(0.0, 0.0, 0.0), (1.0, 1.0, 1.0)],
}
CMAPS = tuple(_ANCHORS)


def _np(a):
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def colormap(name):
    """A function mapping values in [0, 1] (any shape) to float RGB in [0, 1] (shape + (3,))."""
    if name in _ANCHORS:
        anchors = np.asarray(_ANCHORS[name], dtype=np.float64)
        pos = np.linspace(0.0, 1.0, len(anchors))

        def apply(v):
            v = np.clip(np.asarray(v, dtype=np.float64), 0.0, 1.0)
            return np.stack([np.interp(v, pos, anchors[:, c]) for c in range(3)], axis=-1)
        return apply
    try:
        import matplotlib
        cmap = matplotlib.colormaps[name]
    except ImportError:
        raise ValueError(f"unknown colour map {name!r}: choose from {', '.join(CMAPS)} "
                         "(other names need matplotlib)") from None
    except KeyError:
        raise ValueError(f"unknown colour map {name!r}: choose from {', '.join(CMAPS)} or a "
                         "matplotlib colour map") from None
    return lambda v: np.asarray(cmap(np.clip(np.asarray(v, dtype=np.float64), 0, 1)))[..., :3]


def reduce_channels(relevance, reduce="sum"):
    """(H, W) or (C, H, W) relevance -> (H, W): channels summed (``sum``), or the channel with
    the largest magnitude kept per pixel (``absmax``)."""
    r = _np(relevance).astype(np.float64)
    if r.ndim == 3:
        if reduce == "sum":
            r = r.sum(0)
        elif reduce == "absmax":
            idx = np.abs(r).argmax(0)
            r = np.take_along_axis(r, idx[None], 0)[0]
        else:
            raise ValueError(f"reduce must be 'sum' or 'absmax', got {reduce!r}")
    elif r.ndim != 2:
        raise ValueError(f"relevance must have shape (H, W) or (C, H, W), got {r.shape}")
    return r


def normalize(relevance, level=1.0):
    """Symmetric normalisation around zero: ``r / (level * max|r|)`` clipped to [-1, 1].
    ``level < 1`` saturates the strongest values. All-zero relevance stays zero."""
    r = _np(relevance).astype(np.float64)
    m = np.abs(r).max() * float(level) if r.size else 0.0
    if not np.isfinite(m) or m == 0:
        return np.zeros_like(r)
    return np.clip(r / m, -1.0, 1.0)


def heatmap(relevance, cmap="bwr", *, level=1.0, reduce="sum"):
    """Relevance (H, W) or (C, H, W) -> uint8 RGB heatmap (H, W, 3); zero relevance gets the
    colour map's centre colour, positive values the upper half, negative the lower half."""
    r = normalize(reduce_channels(relevance, reduce), level)
    rgb = colormap(cmap)((r + 1.0) / 2.0)
    return np.round(rgb * 255).astype(np.uint8)


def input_image(x):
    """Input (H, W), (1, H, W) or (3, H, W) -> uint8 RGB, scaled from its own min..max (pass
    de-normalised pixels in [0, 1] for true colours)."""
    a = _np(x).astype(np.float64)
    if a.ndim == 3:
        a = a.transpose(1, 2, 0) if a.shape[0] in (1, 3) else a
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    if a.shape[-1] != 3:
        raise ValueError(f"cannot show an input of shape {_np(x).shape} as an image")
    lo, hi = a.min(), a.max()
    if 0.0 <= lo and hi <= 1.0:
        lo, hi = 0.0, 1.0
    a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return np.round(a * 255).astype(np.uint8)


def overlay(relevance, x, cmap="bwr", *, alpha=0.6, level=1.0, reduce="sum"):
    """Heatmap blended over a grey version of the input; ``alpha`` is the heatmap's weight where
    relevance is strongest (fading to the plain input where it is zero)."""
    heat = heatmap(relevance, cmap, level=level, reduce=reduce).astype(np.float64)
    base = input_image(x).astype(np.float64).mean(-1, keepdims=True).repeat(3, -1)
    w = alpha * np.abs(normalize(reduce_channels(relevance, reduce), level))[..., None]
    return np.round((1 - w) * base + w * heat).astype(np.uint8)


def _upscale(img, scale):
    if scale > 1:
        img = img.repeat(scale, 0).repeat(scale, 1)
    return img


def grid(rows, *, scale=1, pad=2, row_labels=None, col_labels=None, background=255):
    """Tile uint8 RGB images (a list of rows, each a list of (H, W, 3) arrays of one size) into
    one image, nearest-neighbour upscaled by ``scale``, with optional text labels."""
    if not rows or not rows[0]:
        raise ValueError("grid needs at least one image")
    cells = [[_upscale(np.asarray(c, dtype=np.uint8), scale) for c in row] for row in rows]
    h, w = cells[0][0].shape[:2]
    ncol = max(len(r) for r in cells)
    top = 14 if col_labels else 0
    left = 0
    if row_labels:
        left = 6 * max(len(str(s)) for s in row_labels) + 6
    H = top + len(cells) * (h + pad) + pad
    W = left + ncol * (w + pad) + pad
    out = np.full((H, W, 3), background, dtype=np.uint8)
    for i, row in enumerate(cells):
        for j, c in enumerate(row):
            if c.shape[:2] != (h, w):
                raise ValueError(f"grid cells differ in size: {c.shape[:2]} vs {(h, w)}")
            y0, x0 = top + pad + i * (h + pad), left + pad + j * (w + pad)
            out[y0:y0 + h, x0:x0 + w] = c
    if row_labels or col_labels:
        from PIL import Image, ImageDraw
        img = Image.fromarray(out)
        draw = ImageDraw.Draw(img)
        for j, s in enumerate(col_labels or []):
            draw.text((left + pad + j * (w + pad), 1), str(s), fill=(0, 0, 0))
        for i, s in enumerate(row_labels or []):
            draw.text((2, top + pad + i * (h + pad) + h // 2 - 5), str(s), fill=(0, 0, 0))
        out = np.asarray(img)
    return out


def save_image(path, img):
    """Write a uint8 RGB array as an image file (PNG by extension) with Pillow."""
    from PIL import Image
    Image.fromarray(np.asarray(img, dtype=np.uint8)).save(path)


def heatmap_grid(inputs, relevances, cmap="bwr", *, scale=1, level=1.0, col_labels=None,
                 row_labels=None, reduce="sum"):
    """One row per sample: the input, then one heatmap per method.

    ``inputs``: (N, C, H, W) or (N, H, W); ``relevances``: a list (one per method) of arrays with
    the inputs' shape."""
    x = _np(inputs)
    rows = []
    for i in range(len(x)):
        row = [input_image(x[i])]
        row += [heatmap(_np(r)[i], cmap, level=level, reduce=reduce) for r in relevances]
        rows.append(row)
    return grid(rows, scale=scale, col_labels=col_labels, row_labels=row_labels)
