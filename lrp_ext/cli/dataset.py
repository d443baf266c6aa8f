"""Inputs for the command line (images, tensor files, image folders) and the sharded, resumable,
optionally distributed relevance writer behind ``lrp-ext explain-dataset``.

Output layout of ``explain_dataset(out_dir)``::

    run.json                   settings of the run (checked when a run is resumed)
    shards/meta-00000.json     per-sample sources, labels, targets, target scores, relevance
                               sums, and the length and sha256 of the relevance file
    shards/relevance-00000.npy relevance of samples [0, shard_size), float32, the input's shape
    ...
    index.json                 written last, once every shard exists: shard list with sha256

Shard ``s`` holds samples ``[s * shard_size, min((s + 1) * shard_size, N))`` and is computed by
rank ``s % world_size``, so the files do not depend on the number of processes. Every file is
written to a hidden temporary name, fsynced and then renamed into place: a killed run leaves
either a complete file or none. The meta file, carrying the relevance file's length and sha256,
is published before the relevance file; a rerun keeps a shard only if its relevance file
matches them (``check_shard``) and recomputes the others.
"""
import contextlib
import dataclasses
import hashlib
import io
import json
import os

import numpy as np
import torch

from .models import InputError, _one_line, attribute

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
TENSOR_EXTS = (".pt", ".pth", ".npy")
FORMAT = "lrp_ext.explain_dataset/2"
LOCK_NAME = ".lock"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- preprocessing
@dataclasses.dataclass
class Preprocess:
    """How image files become tensors: RGB (``channels=3``) or grey (1), optionally resized to
    ``size`` (h, w), scaled to [0, 1], then ``(x - mean) / std`` per channel if given."""
    channels: int = 3
    size: tuple = None
    mean: tuple = None
    std: tuple = None

    def to_dict(self):
        return {"channels": self.channels, "size": list(self.size) if self.size else None,
                "mean": list(self.mean) if self.mean else None,
                "std": list(self.std) if self.std else None}

    def _stats(self):
        c = self.channels
        stats = []
        for name, given, default in (("mean", self.mean, 0.0), ("std", self.std, 1.0)):
            v = torch.tensor(given if given else (default,), dtype=torch.float32).reshape(-1)
            if v.numel() not in (1, c):
                need = "1 value" if c == 1 else f"1 or {c} values"
                raise InputError(f"--{name} takes {need} for {c}-channel images "
                                 f"(--channels {c}), got {v.numel()}")
            if not torch.isfinite(v).all():
                raise InputError(f"--{name} values must be finite, got {v.tolist()}")
            stats.append(v.expand(c).reshape(c, 1, 1))
        mean, std = stats
        if (std <= 0).any():
            raise InputError("--std values must be positive")
        return mean, std

    def normalize(self, x):
        mean, std = self._stats()
        return (x - mean) / std

    def bounds(self):
        """Per-channel (low, high) of normalised pixels, shape (C, 1, 1): the images of 0 and 1."""
        mean, std = self._stats()
        return (0 - mean) / std, (1 - mean) / std

    def denormalize(self, x):
        mean, std = self._stats()
        return x * std.to(x) + mean.to(x)


# PIL modes the loader reads, by depth. 8-bit modes are converted by PIL to L or RGB and scaled
# by 1/255; 16-bit ones (and 32-bit integer "I", which holds 16-bit PNGs in some Pillow
# versions) by 1/65535; float images ("F") are taken as they are.
MODES_8BIT = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
              "LAB", "HSV")
MODES_16BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
MODES_FLOAT = ("F",)
IMAGE_MODES = MODES_8BIT + MODES_16BIT + MODES_FLOAT
_CONVERT_VIA = {"La": "LA", "LAB": "RGB"}   # no direct conversion to L / RGB in PIL


def image_array(img, channels=3, size=None):
    """A PIL image -> float32 array (C, H, W), read at the depth of its mode (see
    ``IMAGE_MODES``), ``channels`` 1 (grey) or 3 (RGB; one-channel images are repeated),
    resized bilinearly to ``size`` (h, w) if given. Raises ``ValueError`` naming the problem."""
    from PIL import Image
    mode = img.mode
    if mode in MODES_8BIT:
        target = "L" if channels == 1 else "RGB"
        if mode in _CONVERT_VIA:
            img = img.convert(_CONVERT_VIA[mode])
        img = img.convert(target)
        if size:
            img = img.resize((size[1], size[0]), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.float32) / 255.0
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    if mode not in MODES_16BIT + MODES_FLOAT:
        raise ValueError(f"image mode {mode!r} is not supported (supported: "
                         f"{', '.join(IMAGE_MODES)})")
    raw = np.asarray(img)
    if mode in MODES_FLOAT:
        arr = raw.astype(np.float32)
        if not np.isfinite(arr).all():
            raise ValueError("float image (mode 'F') holds NaN or infinite values")
    else:
        lo, hi = (int(raw.min()), int(raw.max())) if raw.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise ValueError(f"integer image (mode {mode!r}) holds values in [{lo}, {hi}], "
                             "outside the 16-bit range [0, 65535]")
        arr = raw.astype(np.float32) / 65535.0
    if size:
        arr = np.asarray(Image.fromarray(arr, mode="F").resize((size[1], size[0]),
                                                                Image.BILINEAR))
    return np.repeat(arr[None], channels, axis=0)


def load_image(path, prep):
    """Image file -> float tensor (C, H, W), read at its own depth (``image_array``), then
    normalised by ``prep``."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            arr = image_array(img, prep.channels, prep.size)
    except FileNotFoundError:
        raise InputError(f"input file not found: {path}") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for bad files
        raise InputError(f"cannot read image {path}: {_one_line(exc)}") from None
    return prep.normalize(torch.from_numpy(np.ascontiguousarray(arr)))


def load_tensor_file(path):
    """``.npy`` array or ``torch.save`` file -> ``(x, labels_or_None)``. A ``.pt`` file may hold a
    tensor, a dict with ``x``/``inputs``/``data`` (and ``y``/``labels``/``targets``), or an
    ``(x, y)`` pair."""
    try:
        if path.lower().endswith(".npy"):
            obj = np.load(path, allow_pickle=False)
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"input file not found: {path}") from None
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot read tensor file {path}: {_one_line(exc)}") from None
    y = None
    if isinstance(obj, dict):
        xk = next((k for k in ("x", "inputs", "data", "images") if k in obj), None)
        if xk is None:
            raise InputError(f"tensor file {path}: dict without an 'x' (or 'inputs', 'data', "
                             f"'images') entry; keys: {sorted(map(str, obj))}")
        yk = next((k for k in ("y", "labels", "targets") if k in obj), None)
        x, y = obj[xk], (obj[yk] if yk else None)
    elif isinstance(obj, (tuple, list)) and len(obj) == 2:
        x, y = obj
    else:
        x = obj
    try:
        x = torch.as_tensor(np.asarray(x) if isinstance(x, np.ndarray) else x)
    except Exception:  # noqa: BLE001
        raise InputError(f"tensor file {path}: holds a {type(x).__name__}, not a tensor") from None
    if not torch.is_tensor(x) or not (x.is_floating_point() or x.dtype in (torch.uint8,)):
        raise InputError(f"tensor file {path}: inputs must be a float tensor (got {x.dtype})")
    x = x.float()
    if not torch.isfinite(x).all():
        raise InputError(f"tensor file {path}: inputs hold NaN or infinite values")
    if y is not None:
        y = torch.as_tensor(y).long().reshape(-1)
        if y.numel() != x.shape[0]:
            raise InputError(f"tensor file {path}: {x.shape[0]} inputs but {y.numel()} labels")
    return x, y


def load_inputs(paths, prep, sample_dims=None):
    """Files given on the command line -> ``(x, names)``: images become one sample each; a tensor
    file adds all samples of its first dim (or one sample if it has ``sample_dims`` dims)."""
    xs, names = [], []
    for p in paths:
        if not os.path.exists(p):
            raise InputError(f"input file not found: {p}")
        if os.path.isdir(p):
            raise InputError(f"input {p} is a directory (use explain-dataset for folders)")
        stem = os.path.splitext(os.path.basename(p))[0]
        if p.lower().endswith(TENSOR_EXTS):
            x, _ = load_tensor_file(p)
            if sample_dims is not None and x.dim() == sample_dims:
                x = x[None]
            if x.dim() < 2:
                raise InputError(f"tensor file {p}: shape {tuple(x.shape)} has no batch dim")
            if len(x) == 0:
                raise InputError(f"tensor file {p} holds no samples (shape {tuple(x.shape)})")
            xs.extend(x)
            names.extend([stem] if len(x) == 1 else [f"{stem}-{i}" for i in range(len(x))])
        else:
            xs.append(load_image(p, prep))
            names.append(stem)
    shapes = {tuple(x.shape) for x in xs}
    if len(shapes) > 1:
        raise InputError(f"inputs differ in shape ({', '.join(map(str, sorted(shapes)))}): "
                         "use --resize")
    # disambiguate repeated names
    seen = {}
    for i, n in enumerate(names):
        if n in seen:
            seen[n] += 1
            names[i] = f"{n}-{seen[n]}"
        else:
            seen[n] = 0
    return torch.stack(xs), names


# --------------------------------------------------------------------------- datasets
class TensorData:
    def __init__(self, path):
        self.path = path
        self.x, self.y = load_tensor_file(path)
        if self.x.dim() < 2:
            raise InputError(f"tensor file {path}: shape {tuple(self.x.shape)} has no batch dim")
        self.classes = None

    def __len__(self):
        return self.x.shape[0]

    def batch(self, start, stop):
        y = self.y[start:stop] if self.y is not None else torch.full((stop - start,), -1)
        return self.x[start:stop], y

    def sources(self, start, stop):
        return [f"{os.path.basename(self.path)}[{i}]" for i in range(start, stop)]

    def bounds(self):
        return self.x.min(), self.x.max()

    def display(self, x):
        return x


class ImageFolderData:
    """``root/<class>/<image>`` (torchvision's ImageFolder layout), sorted by class then file."""

    def __init__(self, root, prep):
        self.root, self.prep = root, prep
        self.classes = sorted(d.name for d in os.scandir(root) if d.is_dir()
                              and not d.name.startswith("."))
        self.samples = []
        for ci, c in enumerate(self.classes):
            for dirpath, dirnames, files in sorted(os.walk(os.path.join(root, c))):
                dirnames.sort()
                for f in sorted(files):
                    if f.lower().endswith(IMAGE_EXTS) and not f.startswith("."):
                        self.samples.append((os.path.join(dirpath, f), ci))
        if not self.classes:
            raise InputError(f"data folder {root} has no class sub-folders (ImageFolder layout: "
                             f"{root}/<class>/<image>)")
        if not self.samples:
            raise InputError(f"data folder {root} holds no images ({', '.join(IMAGE_EXTS)})")

    def __len__(self):
        return len(self.samples)

    def batch(self, start, stop):
        xs = [load_image(p, self.prep) for p, _ in self.samples[start:stop]]
        shapes = {tuple(x.shape) for x in xs}
        if len(shapes) > 1:
            raise InputError(f"images in {self.root} differ in size ({sorted(shapes)}): "
                             "use --resize H W")
        return torch.stack(xs), torch.tensor([c for _, c in self.samples[start:stop]])

    def sources(self, start, stop):
        return [os.path.relpath(p, self.root) for p, _ in self.samples[start:stop]]

    def bounds(self):
        return self.prep.bounds()

    def display(self, x):
        return self.prep.denormalize(x)


def open_dataset(path, prep):
    if not os.path.exists(path):
        raise InputError(f"data path not found: {path}")
    if os.path.isdir(path):
        return ImageFolderData(path, prep)
    if path.lower().endswith(TENSOR_EXTS):
        return TensorData(path)
    raise InputError(f"data path {path}: expected an image folder or a tensor file "
                     f"({', '.join(TENSOR_EXTS)})")


# --------------------------------------------------------------------------- atomic files
def _fsync_dir(d):
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, data):
    """Write ``data`` (bytes, or a callable taking a binary file) to ``path`` via a hidden
    temporary file in the same folder, fsync, ``os.replace``: readers see all or nothing."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)


@contextlib.contextmanager
def atomic_path(path):
    """Context manager yielding a hidden temporary path next to ``path``; on success the file
    written there is fsynced and renamed to ``path``, on error it is removed."""
    d, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(d, f".{base}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(d)


def atomic_write_json(path, obj):
    atomic_write(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- sharded writer
def shard_paths(out_dir, s):
    d = os.path.join(out_dir, "shards")
    return os.path.join(d, f"relevance-{s:05d}.npy"), os.path.join(d, f"meta-{s:05d}.json")


MISSING = "missing"


def shard_range(s, n, shard_size):
    return s * shard_size, min((s + 1) * shard_size, n)


def check_shard(out_dir, s, n, shard_size, sample_shape=None):
    """``None`` when shard ``s`` is complete and intact; ``MISSING`` when its relevance file
    does not exist (not computed yet, or interrupted); otherwise a message saying what is
    wrong: an unreadable meta file, another sample range, a length or sha256 that differs from
    the meta file's, or a relevance array of another shape or dtype."""
    rel_path, meta_path = shard_paths(out_dir, s)
    if not os.path.exists(rel_path):
        return MISSING
    name = os.path.relpath(rel_path, out_dir)
    try:
        with open(meta_path) as fh:
            meta = json.load(fh)
        want_len, want_sha = int(meta["relevance_bytes"]), str(meta["relevance_sha256"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{os.path.relpath(meta_path, out_dir)} is missing or unreadable ({_one_line(exc)})"
    start, stop = shard_range(s, n, shard_size)
    if (meta.get("shard"), meta.get("start"), meta.get("stop")) != (s, start, stop):
        return (f"{os.path.relpath(meta_path, out_dir)} describes samples "
                f"[{meta.get('start')}, {meta.get('stop')}), expected [{start}, {stop})")
    size = os.path.getsize(rel_path)
    if size != want_len:
        return f"{name} has {size} bytes, its meta file says {want_len}"
    if _sha256(rel_path) != want_sha:
        return f"{name} does not match the sha256 in its meta file"
    if sample_shape is not None:
        try:
            arr = np.load(rel_path, mmap_mode="r", allow_pickle=False)
        except Exception as exc:  # noqa: BLE001
            return f"{name} is not a readable .npy file ({_one_line(exc)})"
        want = (stop - start,) + tuple(sample_shape)
        if arr.shape != want or arr.dtype != np.float32:
            return f"{name} holds {arr.dtype} {arr.shape}, expected float32 {want}"
    return None


def num_shards(n, shard_size):
    return (n + shard_size - 1) // shard_size


def check_run_config(out_dir, config):
    """Refuse to resume into a folder written with other settings (mixing them would silently
    give a wrong result)."""
    p = os.path.join(out_dir, "run.json")
    if not os.path.exists(p):
        return False
    try:
        with open(p) as fh:
            old = json.load(fh)
    except (OSError, ValueError) as exc:
        raise InputError(f"{p} is unreadable ({_one_line(exc)}): use a new --out folder") from None
    if old != config:
        diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
        if diff == ["cpu_threads"]:
            raise InputError(f"{out_dir} was started with {old.get('cpu_threads')} CPU thread(s),"
                             f" this process has {config.get('cpu_threads')}: resume with "
                             f"OMP_NUM_THREADS={old.get('cpu_threads')} (shards are "
                             "byte-identical only at the same thread count)")
        raise InputError(f"{out_dir} holds a run with other settings ({', '.join(diff)}): "
                         "use a new --out folder or the same settings to resume")
    return True


def _exit_hook():
    """``LRP_EXT_EXIT_AFTER_SHARDS=k`` ends the process abruptly (os._exit, no clean-up, like a
    kill) after it has written k shards: used to test that runs resume correctly."""
    v = os.environ.get("LRP_EXT_EXIT_AFTER_SHARDS")
    return int(v) if v else None


def compute_shard(model, data, s, n, shard_size, batch_size, method, device, low, high, target,
                  top_k=None):
    start, stop = shard_range(s, n, shard_size)
    rels, targets, scores, labels = [], [], [], []
    explainers = {}  # what the rules derive from the weights, kept across the shard's batches
    for b in range(start, stop, batch_size):
        x, y = data.batch(b, min(b + batch_size, stop))
        x = x.to(device)
        rel, out, t = attribute(model, x, method, target=target, low=low, high=high, seed=b,
                                top_k=top_k, explainers=explainers)
        rels.append(rel.float().cpu().numpy())
        targets += t.cpu().tolist()
        sc = out.gather(1, t if top_k else t[:, None])
        scores += (sc if top_k else sc[:, 0]).float().cpu().tolist()
        labels += y.tolist()
    rel = np.ascontiguousarray(np.concatenate(rels).astype(np.float32, copy=False))
    sums = rel.reshape(rel.shape[:2 if top_k else 1] + (-1,)).sum(-1, dtype=np.float64)
    meta = {"shard": s, "start": start, "stop": stop, "sources": data.sources(start, stop),
            "labels": labels, "targets": targets, "scores": scores,
            "relevance_sums": sums.tolist()}
    return rel, meta


def relevance_shape(config):
    """The per-sample shape of a run's relevance: the sample's, after ``top_k`` with --top-k."""
    shape = config.get("sample_shape")
    if shape is None or not config.get("top_k"):
        return shape
    return [config["top_k"]] + list(shape)


def write_shard(out_dir, s, rel, meta):
    """The meta file, with the relevance file's length and sha256, first; then the relevance
    file: a shard counts once its .npy exists and matches them."""
    rel_path, meta_path = shard_paths(out_dir, s)
    buf = io.BytesIO()
    np.save(buf, rel, allow_pickle=False)
    data = buf.getvalue()
    meta = dict(meta, relevance_bytes=len(data), relevance_sha256=hashlib.sha256(data).hexdigest())
    atomic_write_json(meta_path, meta)
    atomic_write(rel_path, data)


def remove_stale_temps(out_dir, shards):
    d = os.path.join(out_dir, "shards")
    if not os.path.isdir(d):
        return
    mine = {os.path.basename(p) for s in shards for p in shard_paths(out_dir, s)}
    for f in os.listdir(d):
        if f.startswith(".") and f.endswith(".tmp") and f[1:].rsplit(".", 2)[0] in mine:
            try:
                os.unlink(os.path.join(d, f))
            except OSError:
                pass


def explain_dataset(model, data, out_dir, *, method, config, batch_size=32, shard_size=256,
                    device="cpu", rank=0, world_size=1, low=None, high=None, target=None,
                    progress=True, log=None, top_k=None):
    """Compute and write the shards of this rank (``s % world_size == rank``) that are missing
    or damaged (``check_shard``; each damaged one is reported through ``log``, a callable
    taking a line). Returns the number of shards written by this call."""
    n = len(data)
    total = num_shards(n, shard_size)
    mine = [s for s in range(total) if s % world_size == rank]
    todo = []
    for s in mine:
        problem = check_shard(out_dir, s, n, shard_size, relevance_shape(config))
        if problem is not None:
            todo.append(s)
            if problem != MISSING and log is not None:
                log(f"shard {s} is damaged: {problem}; recomputing it")
    os.makedirs(os.path.join(out_dir, "shards"), exist_ok=True)
    remove_stale_temps(out_dir, todo)
    exit_after = _exit_hook()
    bar = None
    try:
        from tqdm import tqdm
    except ImportError:  # the progress bar is optional
        progress = False
    if progress:
        own = sum(min((s + 1) * shard_size, n) - s * shard_size for s in mine)
        left = sum(min((s + 1) * shard_size, n) - s * shard_size for s in todo)
        bar = tqdm(total=own, initial=own - left, unit="sample", dynamic_ncols=True,
                   desc=f"rank {rank}" if world_size > 1 else "explain", position=rank,
                   leave=True)
    written = 0
    try:
        for s in todo:
            rel, meta = compute_shard(model, data, s, n, shard_size, batch_size, method, device,
                                      low, high, target, top_k)
            write_shard(out_dir, s, rel, meta)
            written += 1
            if bar is not None:
                bar.update(meta["stop"] - meta["start"])
            if exit_after is not None and written >= exit_after:
                os._exit(3)
    finally:
        if bar is not None:
            bar.close()
    return written


def write_index(out_dir, n, shard_size, config):
    """Write ``index.json`` once every shard exists and is intact; returns its path."""
    shards = []
    for s in range(num_shards(n, shard_size)):
        rel, meta = shard_paths(out_dir, s)
        problem = check_shard(out_dir, s, n, shard_size, relevance_shape(config))
        if problem is not None:
            what = "missing" if problem == MISSING else f"damaged ({problem})"
            raise InputError(f"shard {s} is {what} in {out_dir}: rerun to complete it")
        start, stop = shard_range(s, n, shard_size)
        shards.append({"shard": s, "start": start, "stop": stop,
                       "relevance": os.path.relpath(rel, out_dir),
                       "meta": os.path.relpath(meta, out_dir), "sha256": _sha256(rel)})
    index = {"format": FORMAT, "num_samples": n, "shard_size": shard_size, "settings": config,
             "shards": shards}
    path = os.path.join(out_dir, "index.json")
    atomic_write_json(path, index)
    return path


def verify_run(out_dir):
    """Check a finished run without running any model: ``index.json`` and ``run.json`` agree,
    and every shard is intact (``check_shard``) and has the sha256 the index lists. Returns
    ``(number of shards, list of problems)``; raises ``InputError`` for a folder that holds no
    finished run."""
    if not os.path.isdir(out_dir):
        raise InputError(f"{out_dir} is not a folder")
    p = os.path.join(out_dir, "index.json")
    if not os.path.exists(p):
        raise InputError(f"{out_dir} holds no index.json: not a finished explain-dataset run "
                         "(rerun the command that wrote it to complete it)")
    try:
        index = load_index(out_dir)
        n, shard_size, config = index["num_samples"], index["shard_size"], index["settings"]
        listed = {int(e["shard"]): e for e in index["shards"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{p} is unreadable: {_one_line(exc)}") from None
    if index.get("format") != FORMAT:
        raise InputError(f"{p} has format {index.get('format')!r}, this version reads {FORMAT!r}")
    problems = []
    try:
        with open(os.path.join(out_dir, "run.json")) as fh:
            if json.load(fh) != config:
                problems.append("run.json differs from the settings in index.json")
    except (OSError, ValueError) as exc:
        problems.append(f"run.json is missing or unreadable ({_one_line(exc)})")
    total = num_shards(n, shard_size)
    if sorted(listed) != list(range(total)):
        problems.append(f"index.json lists shards {sorted(listed)}, expected 0..{total - 1}")
    for s in range(total):
        problem = check_shard(out_dir, s, n, shard_size, relevance_shape(config))
        if problem == MISSING:
            problem = f"{os.path.relpath(shard_paths(out_dir, s)[0], out_dir)} is missing"
        elif problem is None and s in listed and listed[s].get("sha256") != _sha256(
                shard_paths(out_dir, s)[0]):
            problem = "its relevance file does not match the sha256 in index.json"
        if problem is not None:
            problems.append(f"shard {s}: {problem}")
    return total, problems


def lock_output(out_dir):
    """Create ``out_dir`` and take an exclusive ``fcntl`` lock on ``out_dir/.lock``; returns
    the file descriptor (the lock lasts until it is closed or the process ends, however it
    ends). Raises ``InputError`` while another process holds the lock."""
    import fcntl
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise InputError(f"{out_dir} is in use by another explain-dataset run (it holds {path}):"
                         " wait for it to finish or use another --out") from None
    except OSError as exc:                       # e.g. a file system without locks
        os.close(fd)
        raise InputError(f"cannot lock {path}: {exc.strerror or exc}") from None
    return fd


def load_index(out_dir):
    with open(os.path.join(out_dir, "index.json")) as fh:
        return json.load(fh)


def load_relevance(out_dir, mmap=True):
    """All relevance of a finished ``explain_dataset`` run as one array (N, ...), in sample
    order (shards are memory-mapped and concatenated)."""
    index = load_index(out_dir)
    parts = [np.load(os.path.join(out_dir, s["relevance"]), mmap_mode="r" if mmap else None)
             for s in index["shards"]]
    return np.concatenate(parts) if parts else np.zeros((0,), np.float32)
