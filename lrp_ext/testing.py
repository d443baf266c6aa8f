"""Helpers for testing lrp_ext (and code built on it): inputs, kernel configurations, oracles.

Used by the project's test suite; importable by other test files (CUDA, conv, models).

* Kernel configurations: the compiled kernels read a few environment variables at each call
  (``LRP_EXT_CPU_PATH`` = auto|fused|gemm, ``LRP_EXT_CPU_ISA`` = auto|avx512|avx2|scalar,
  ``LRP_EXT_CUDA_PATH`` = auto|fused|gemm, ``LRP_EXT_ASSUME_MIXED`` = 1).
  :func:`kernel_configs` lists the combinations worth testing on this machine.
* Inputs: :func:`make_case` draws random but well-conditioned inputs (no relevance on outputs
  whose denominator is close to zero, so that float32/bfloat16 kernels cannot flip a sign
  decision that float64 makes the other way), in any dtype, device and memory layout.
* Oracle: :func:`check_against_reference` compares a result with ``lrp_ext.reference``
  evaluated in float64 on float64 copies of the same inputs, with a tolerance derived from the
  error of the same reference math done naively in the low precision dtype.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch

from . import reference

__all__ = [
    "RULES", "DTYPES", "ENV_VARS", "DEFAULT_PARAMS", "KernelConfig", "Case", "cpu_isas",
    "cuda_available", "kernel_configs", "apply_config", "make_case", "call_rule",
    "reference64", "to64", "rel_err", "unit_roundoff", "tolerance", "check_against_reference",
    "assert_close_norm", "layout_variants", "guard_relevance", "denominators", "expected",
    "cached_case", "LAYOUTS", "denominator_sensitivity",
]

RULES = ("zero", "epsilon", "gamma", "alpha_beta", "z_plus", "flat", "w_square", "z_box")
DTYPES = (torch.float32, torch.float64, torch.bfloat16)
ENV_VARS = ("LRP_EXT_CPU_PATH", "LRP_EXT_CPU_ISA", "LRP_EXT_CUDA_PATH", "LRP_EXT_ASSUME_MIXED")

# Rule parameters for the random tests: defaults except where a non-default value makes the
# parameter visible in the result (a large epsilon, a non-default gamma, a real box).
DEFAULT_PARAMS: Dict[str, Dict[str, Any]] = {
    "zero": {},
    "epsilon": {"epsilon": 0.1},
    "gamma": {"gamma": 0.3, "stabilizer": 1e-6},
    "alpha_beta": {"alpha": 2.0, "beta": 1.0, "stabilizer": 1e-6},
    "z_plus": {"stabilizer": 1e-6},
    "flat": {"stabilizer": 1e-6},
    "w_square": {"stabilizer": 1e-6},
    "z_box": {"low": -2.5, "high": 3.0, "stabilizer": 1e-6},
}


# ----------------------------------------------------------------------------------------------
# kernel configurations
# ----------------------------------------------------------------------------------------------
def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_isas() -> Tuple[str, ...]:
    """The ``LRP_EXT_CPU_ISA`` values this CPU can run: always ``scalar``, plus ``avx2`` (with
    FMA) and ``avx512`` (AVX-512F/BW/VL/DQ) when the CPU has them."""
    flags = _cpu_flags()
    if not flags:  # no /proc/cpuinfo: ask torch what its own kernels use
        cap = torch.backends.cpu.get_cpu_capability().upper()
        flags = {"avx2", "fma"} if cap in ("AVX2", "AVX512") else set()
        if cap == "AVX512":
            flags |= {"avx512f", "avx512bw", "avx512vl", "avx512dq"}
    isas = ["scalar"]
    if {"avx2", "fma"} <= flags:
        isas.append("avx2")
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        isas.append("avx512")
    return tuple(isas)


def cuda_available() -> bool:
    return torch.cuda.is_available()


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """A device plus the environment that selects one code path of the compiled kernels."""
    device: str
    env: Tuple[Tuple[str, str], ...] = ()

    @property
    def id(self) -> str:
        parts = [self.device] + [v for _, v in self.env]
        return "-".join(parts)


def kernel_configs(full: bool = True) -> Tuple[KernelConfig, ...]:
    """Configurations to parametrise kernel tests over.

    ``full=True``: on CPU every path (fused, gemm) with every ISA of :func:`cpu_isas`, plus
    auto/auto; on CUDA auto, fused and gemm.  ``full=False``: paths only (ISA auto).
    CUDA configurations are listed even without a GPU (tests skip them, see apply_config).
    """
    cfgs = [KernelConfig("cpu", (("LRP_EXT_CPU_PATH", "auto"), ("LRP_EXT_CPU_ISA", "auto")))]
    for path in ("fused", "gemm"):
        isas = cpu_isas() if full else ("auto",)
        for isa in isas:
            cfgs.append(KernelConfig("cpu", (("LRP_EXT_CPU_PATH", path),
                                             ("LRP_EXT_CPU_ISA", isa))))
    for path in ("auto", "fused", "gemm"):
        cfgs.append(KernelConfig("cuda", (("LRP_EXT_CUDA_PATH", path),)))
    return tuple(cfgs)


def apply_config(cfg: KernelConfig, monkeypatch, require_compiled: bool = True) -> None:
    """Skip unless ``cfg`` can run here; then set its environment through ``monkeypatch``.

    ``require_compiled``: skip when the compiled kernels for the device are not built (the
    public functions would only run the reference fallback)."""
    import pytest

    from .ops import has_compiled_ops

    if cfg.device == "cuda" and not cuda_available():
        pytest.skip("CUDA is not available")
    if not has_compiled_ops(cfg.device):
        if require_compiled:
            pytest.skip(f"lrp_ext compiled ops for {cfg.device} are not built "
                        "(build with `python setup.py build_ext --inplace`)")
        if any(v != "auto" for _, v in cfg.env):  # the reference has no code paths
            pytest.skip(f"code paths need the compiled {cfg.device} ops (reference fallback: "
                        "tested in the 'auto' configuration)")
    for k in ENV_VARS:
        monkeypatch.delenv(k, raising=False)
    for k, v in cfg.env:
        monkeypatch.setenv(k, v)


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Case:
    """Arguments of one rule call: ``call_rule(rule, case.R, case.a, case.W, case.b, **params)``."""
    R: torch.Tensor
    a: torch.Tensor
    W: torch.Tensor
    b: Optional[torch.Tensor]
    params: Dict[str, Any]
    desc: str = ""
    ref64: Optional[torch.Tensor] = None  # filled in by expected() on first use
    naive_err: Optional[float] = None
    sensitivity: Optional[float] = None


def to64(x):
    """Contiguous float64 copy of a tensor (exact for every floating dtype); other values
    unchanged."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(torch.float64).contiguous()
    return x


def _contig(x):
    return x.contiguous() if isinstance(x, torch.Tensor) else x


def call_rule(rule: str, R, a, W, b=None, impl=None, **params):
    """``impl.<rule>(R, a, W, b, **params)``; ``impl`` defaults to the public ``lrp_ext``."""
    if impl is None:
        import lrp_ext as impl
    return getattr(impl, rule)(R, a, W, b, **params)


def reference64(rule: str, R, a, W, b=None, **params) -> torch.Tensor:
    """``lrp_ext.reference.<rule>`` evaluated in float64 on float64 copies of the inputs."""
    params = {k: to64(v) for k, v in params.items()}
    return call_rule(rule, to64(R), to64(a), to64(W), to64(b), impl=reference, **params)


def _bound(v, a):
    if isinstance(v, torch.Tensor):
        return to64(v).to(a.device).expand(a.shape)
    return torch.full(a.shape, float(v), dtype=torch.float64, device=a.device)


def denominators(rule: str, a, W, b=None, **params):
    """``(z, l2, l1)`` triples, in float64, for the denominators of ``rule`` that are sums of
    terms of either sign (shape (..., O)): the sum ``z`` and the Euclidean norm ``l2`` and
    absolute sum ``l1`` of its terms.  A sum computed in working precision u is off by about
    ``u * l1`` at most (typically ``u * l2``), so ``z`` far from zero relative to ``l2`` has a
    reliable sign and ``u * l1 / |z|`` is its relative rounding error.

    epsilon / zero / z_box: their one denominator.  gamma: ``z`` (only through the masks
    [z > 0], [z < 0]; since z_p >= z > 0 and z_n <= z < 0 where used, ``z`` bounds those
    denominators away from zero too).  alpha_beta, z_plus (each denominator has terms of one
    sign), flat (I) and w_square (>= 0) have no cancellation: empty list.
    """
    a, W, b = to64(a), to64(W), to64(b)
    if rule in ("zero", "epsilon", "gamma"):
        z = a @ W.t()
        sq = (a * a) @ (W * W).t()
        ab = a.abs() @ W.abs().t()
        if b is not None:
            z, sq, ab = z + b, sq + b * b, ab + b.abs()
        return [(z, sq.sqrt(), ab)]
    if rule == "z_box":
        lo, hi = _bound(params["low"], a), _bound(params["high"], a)
        Wp, Wn = W.clamp(min=0), W.clamp(max=0)
        z = a @ W.t() - lo @ Wp.t() - hi @ Wn.t()
        sq = (a * a) @ (W * W).t() + (lo * lo) @ (Wp * Wp).t() + (hi * hi) @ (Wn * Wn).t()
        ab = a.abs() @ W.abs().t() + lo.abs() @ Wp.t() + hi.abs() @ (-Wn).t()
        return [(z, sq.sqrt(), ab)]
    return []


def _stab_of(rule, params):
    if rule == "zero":
        return 1e-9
    if rule == "epsilon":
        return params.get("epsilon", 1e-6)
    return params.get("stabilizer", 1e-6)


def denominator_sensitivity(rule: str, R, a, W, b=None, ref=None, **params) -> float:
    """First-order norm-wise relative change of the result when every denominator sum is
    perturbed by its absolute sum of terms (``|dz| = l1``, see :func:`denominators`): the
    result's relative error from computing the denominators in working precision u is about
    ``u`` times this.  It is large only for outputs whose denominator nearly cancels, where
    two valid summation orders can differ by far more than u."""
    R, a, W, b = to64(R), to64(a), to64(W), to64(b)
    if ref is None:
        ref = reference64(rule, R, a, W, b, **params)
    den = torch.linalg.vector_norm(ref[torch.isfinite(ref)]).item()
    if den == 0 or R.numel() == 0 or a.numel() == 0:
        return 0.0
    e = _stab_of(rule, params)
    Wa = W.abs()
    if rule in ("zero", "epsilon"):
        (z, _, l1), = denominators(rule, a, W, b, **params)
        d = R.abs() * l1 / reference.stabilize(z, e) ** 2
        dR = a.abs() * (d @ Wa)
    elif rule == "gamma":
        g = params.get("gamma", 0.25)
        (z, _, l1), = denominators(rule, a, W, b, **params)
        Wu, Wd = W + g * W.clamp(min=0), W + g * W.clamp(max=0)
        ap, an = a.clamp(min=0), a.clamp(max=0)
        bu = 0 if b is None else b + g * b.clamp(min=0)
        bd = 0 if b is None else b + g * b.clamp(max=0)
        zp = ap @ Wu.t() + an @ Wd.t() + bu
        zn = ap @ Wd.t() + an @ Wu.t() + bd
        zsel = torch.where(z > 0, zp, torch.where(z < 0, zn, torch.ones_like(z)))
        d = R.abs() * (z != 0) * (1 + abs(g)) * l1 / reference.stabilize(zsel, e) ** 2
        dR = a.abs() * (d @ Wa) * (1 + abs(g))
    elif rule == "z_box":
        (z, _, l1), = denominators(rule, a, W, b, **params)
        lo, hi = _bound(params["low"], a), _bound(params["high"], a)
        d = R.abs() * l1 / reference.stabilize(z, e) ** 2
        dR = a.abs() * (d @ Wa) + lo.abs() * (d @ W.clamp(min=0)) + hi.abs() * (d @ Wa)
    else:
        return 0.0
    dR = dR[torch.isfinite(ref)]
    return torch.linalg.vector_norm(dR).item() / den


def guard_relevance(rule: str, R, a, W, b=None, rel: float = 0.1, **params) -> torch.Tensor:
    """``R`` with zeros wherever a sign-sensitive denominator of ``rule`` is within
    ``rel * scale`` of zero (see :func:`denominators`), so that low precision rounding cannot
    flip a mask or a stabilizer's sign compared with float64: those outputs then contribute
    exactly 0 in every precision."""
    keep = torch.ones(R.shape, dtype=torch.bool, device=R.device)
    for z, l2, _ in denominators(rule, a, W, b, **params):
        keep &= (z.abs() > rel * l2).to(R.device)
    return torch.where(keep, R, torch.zeros((), dtype=R.dtype, device=R.device))


def _strided(x: torch.Tensor) -> torch.Tensor:
    """Same values, every dim strided (a slice of a twice larger buffer in each dim)."""
    if x.dim() == 0:
        return x
    big = torch.zeros([2 * s for s in x.shape], dtype=x.dtype, device=x.device)
    view = big[tuple(slice(None, None, 2) for _ in x.shape)]
    view.copy_(x)
    return view


def _transposed(x: torch.Tensor) -> torch.Tensor:
    """Same values, column-major storage of the last two dims (1-D: strided)."""
    if x.dim() < 2:
        return _strided(x)
    return x.transpose(-1, -2).contiguous().transpose(-1, -2)


def _expanded_rows(x: torch.Tensor) -> torch.Tensor:
    """Every row equal to the first one, as a stride-0 view (only for >= 2-D tensors)."""
    if x.dim() < 2:
        return _strided(x)
    return x[..., :1, :].expand(x.shape)


def layout_variants(kind: str) -> Dict[str, Callable]:
    """Functions per argument name (R, a, W, b, low, high) that produce a memory layout."""
    same = lambda x: x  # noqa: E731
    if kind == "contiguous":
        return {}
    if kind == "transposed":
        return {"R": _transposed, "a": _transposed, "W": _transposed, "b": _strided}
    if kind == "strided":
        return {"R": _strided, "a": _strided, "W": _strided, "b": _strided,
                "low": _strided, "high": _strided}
    if kind == "expanded":  # broadcast rows of a (stride 0), R and W left alone
        return {"a": _expanded_rows, "R": same}
    raise ValueError(kind)


LAYOUTS = ("contiguous", "transposed", "strided", "expanded")


def make_case(rule: str, batch: Sequence[int], I: int, O: int, dtype=torch.float32,
              device="cpu", *, positive: bool = False, bias: bool = True,
              layout: str = "contiguous", seed: int = 0, params: Optional[dict] = None,
              guard: bool = True) -> Case:
    """Random, well-conditioned arguments for ``rule``.

    ``a`` ~ N(0, 1) (``|N(0, 1)|`` when ``positive``), ``W`` ~ N(0, 1/I), ``b`` ~ N(0, 1/4),
    ``R`` ~ N(0, 1), all rounded to ``dtype``; then ``R`` is zeroed where a sign-sensitive
    denominator is near zero (:func:`guard_relevance`), and the tensors are given the memory
    ``layout`` (one of :data:`LAYOUTS`) on ``device``.  ``params`` default to DEFAULT_PARAMS.
    Tensor ``low``/``high`` in ``params`` are moved to ``device``/``dtype``.
    """
    g = torch.Generator().manual_seed(seed)
    batch = tuple(batch)
    a = torch.randn(batch + (I,), generator=g, dtype=torch.float64)
    if positive:
        a = a.abs()
    W = torch.randn((O, I), generator=g, dtype=torch.float64) / math.sqrt(max(I, 1))
    b = 0.5 * torch.randn((O,), generator=g, dtype=torch.float64) if bias else None
    R = torch.randn(batch + (O,), generator=g, dtype=torch.float64)
    params = dict(DEFAULT_PARAMS[rule] if params is None else params)

    def conv(x):
        return None if x is None else x.to(dtype=dtype).to(device)

    a, W, b, R = conv(a), conv(W), conv(b), conv(R)
    for k in ("low", "high"):
        if isinstance(params.get(k), torch.Tensor):
            params[k] = conv(params[k].to(torch.float64))
    tf = layout_variants(layout)
    if layout == "expanded":  # the guard must see the values the kernel will see
        a = tf["a"](a)
    if guard:
        R = guard_relevance(rule, R, a, W, b, **params)
    named = {"R": R, "a": a, "W": W, "b": b}
    for k, f in tf.items():
        if layout == "expanded" and k == "a":
            continue
        if k in named and named[k] is not None:
            named[k] = f(named[k])
        elif k in params and isinstance(params[k], torch.Tensor):
            params[k] = f(params[k])
    desc = (f"{rule} batch={batch} I={I} O={O} {dtype} {device} "
            f"{'a>=0' if positive else 'mixed'} {'bias' if bias else 'no-bias'} {layout}")
    return Case(named["R"], named["a"], named["W"], named["b"], params, desc)


# ----------------------------------------------------------------------------------------------
# comparison
# ----------------------------------------------------------------------------------------------
def unit_roundoff(dtype) -> float:
    """Unit roundoff u = eps / 2 (float32: 2**-24, bfloat16: 2**-8, float64: 2**-53)."""
    return torch.finfo(dtype).eps / 2


def _err_norms(out: torch.Tensor, ref: torch.Tensor):
    """(||out - ref||, ||ref||) over finite entries in float64, or None when the non-finite
    entries differ (position, NaN-ness or the sign of an infinity)."""
    out, ref = to64(out).to(ref.device), to64(ref)
    fin = torch.isfinite(ref)
    if not torch.equal(torch.isfinite(out), fin):
        return None
    if not fin.all():
        nf = ~fin
        if not torch.equal(out[nf].isnan(), ref[nf].isnan()):
            return None
        inf = nf & ~ref.isnan()
        if not torch.equal(out[inf], ref[inf]):
            return None
        out, ref = out[fin], ref[fin]
    return (torch.linalg.vector_norm(out - ref).item(), torch.linalg.vector_norm(ref).item())


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Norm-wise relative error ``||out - ref|| / ||ref||`` in float64 (absolute when ref = 0),
    over the finite entries; ``inf`` when the non-finite entries differ."""
    n = _err_norms(out, ref)
    if n is None:
        return math.inf
    return n[0] / n[1] if n[1] > 0 else n[0]


def tolerance(dtype, naive_err: float, sensitivity: float = 0.0) -> float:
    """Norm-wise relative tolerance for a kernel result in ``dtype``.

    ``naive_err``: the error of the naive reference in ``dtype`` on the same inputs (the
    caller measures it; it includes the inputs' conditioning).  ``sensitivity``: see
    :func:`denominator_sensitivity`; ``4 u_acc sensitivity`` is added, where u_acc is the
    accumulation precision (float64 for float64, float32 for the others: products of
    bfloat16/float16 values are exact in float32, and a kernel must accumulate in float32).
    That term covers outputs whose denominator nearly cancels, where the rounding error of the
    sum depends on its summation order much more than on the precision: the naive error then
    is one sample of a wide distribution, not a bound.

    float64: 1e-10 (round-off is ~1e-16 times the conditioning, far below 1e6 here).
    float32 / float16: 4 x naive error + 32 u.
    bfloat16: the result is rounded to bfloat16, so each entry carries up to u = 2**-8 = 0.39%
    relative error from the final rounding alone, and a kernel may round z or s to bfloat16
    too (as the naive reference does); a wrong formula is off by O(1).  We allow 4 x the naive
    bfloat16 error plus 4 u (about 1.6%).
    """
    u_acc = unit_roundoff(torch.float64 if dtype == torch.float64 else torch.float32)
    extra = 4 * u_acc * sensitivity
    if dtype == torch.float64:
        return 1e-10 + extra
    u = unit_roundoff(dtype)
    if dtype == torch.bfloat16:
        return 4 * naive_err + 4 * u + extra
    return 4 * naive_err + 32 * u + extra


def assert_close_norm(out, ref, rtol: float, atol: float = 0.0, msg: str = "") -> float:
    """Assert ``||out - ref|| <= rtol ||ref|| + atol`` (norms over the finite entries, which
    must sit at the same positions; non-finite entries must be equal).  Returns the relative
    error."""
    assert tuple(out.shape) == tuple(ref.shape), \
        f"{msg}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    n = _err_norms(out, ref)
    assert n is not None, f"{msg}: non-finite entries differ from the reference"
    num, den = n
    assert num <= rtol * den + atol, \
        f"{msg}: norm-wise relative error {num / den if den else num:.3e} > {rtol:.3e} " \
        f"(|err| {num:.3e}, |ref| {den:.3e}, atol {atol:g})"
    return num / den if den else num


def expected(rule: str, case: Case) -> Tuple[torch.Tensor, float, float]:
    """(float64 reference result, norm-wise error of the naive reference in case's dtype,
    :func:`denominator_sensitivity`); computed once per case and kept on it."""
    if case.ref64 is None:
        case.ref64 = reference64(rule, case.R, case.a, case.W, case.b, **case.params)
        naive = 0.0
        if case.a.dtype != torch.float64:
            # contiguous copies: some low precision matmuls are very slow on strided operands
            low = call_rule(rule, *(_contig(x) for x in (case.R, case.a, case.W, case.b)),
                            impl=reference, **{k: _contig(v) for k, v in case.params.items()})
            naive = rel_err(low, case.ref64)
            assert math.isfinite(naive), f"{case.desc}: naive reference is not finite"
        case.naive_err = naive
        case.sensitivity = denominator_sensitivity(rule, case.R, case.a, case.W, case.b,
                                                   case.ref64, **case.params)
    return case.ref64, case.naive_err, case.sensitivity


@functools.lru_cache(maxsize=8192)
def cached_case(rule: str, batch: Tuple[int, ...], I: int, O: int, dtype, device: str,
                positive: bool, bias: bool, layout: str, seed: int) -> Case:
    """:func:`make_case` (default parameters) with its :func:`expected` values, memoised:
    tests that run the same inputs through several code paths compute the float64 reference
    once.  The tensors are shared: callers must not modify them."""
    case = make_case(rule, batch, I, O, dtype, device, positive=positive, bias=bias,
                     layout=layout, seed=seed)
    expected(rule, case)
    return case


def check_against_reference(rule: str, out: torch.Tensor, case: Case) -> float:
    """Assert ``out`` (a kernel's result for ``case``) matches ``lrp_ext.reference`` in float64
    within :func:`tolerance`; also checks dtype, device and shape.  Returns the error."""
    dtype = case.a.dtype
    assert out.dtype == dtype, f"{case.desc}: result dtype {out.dtype}, expected {dtype}"
    assert out.device == case.a.device, f"{case.desc}: result on {out.device}"
    assert out.shape == case.a.shape, \
        f"{case.desc}: result shape {tuple(out.shape)}, expected {tuple(case.a.shape)}"
    ref, naive, sens = expected(rule, case)
    # the absolute floor only matters when the reference is (nearly) all zeros
    atol = 1e-200 if dtype == torch.float64 else 1e-30
    return assert_close_norm(out, ref, tolerance(dtype, naive, sens), atol,
                             f"{case.desc} (naive {dtype} reference error {naive:.2e}, "
                             f"denominator sensitivity {sens:.3g})")
