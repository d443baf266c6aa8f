"""Without the compiled module every public function runs lrp_ext.reference, warning once.

Simulated in a fresh interpreter where importing ``lrp_ext._C`` fails (a meta-path finder
that refuses it), so the extension built in the tree cannot interfere."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

import lrp_ext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BLOCK = textwrap.dedent("""
    import importlib.abc, sys
    class _Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "lrp_ext._C":
                raise ImportError("lrp_ext._C refused by the test")
            return None
    sys.meta_path.insert(0, _Refuse())
""")

BODY = textwrap.dedent("""
    import json, warnings
    import torch
    warnings.simplefilter("always")  # "once" must come from lrp_ext itself
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import lrp_ext
        from lrp_ext import reference, testing
        report = {"cpu": lrp_ext.has_compiled_ops("cpu"), "cuda": lrp_ext.has_compiled_ops("cuda"),
                  "op_registered": hasattr(torch.ops.lrp_ext, "epsilon"), "mismatch": []}
        for rule in testing.RULES:
            for dtype in (torch.float32, torch.float64, torch.bfloat16):
                case = testing.make_case(rule, (3,), 9, 5, dtype, seed=1)
                args = (case.R, case.a, case.W, case.b)
                got = getattr(lrp_ext, rule)(*args, **case.params)
                want = getattr(reference, rule)(*args, **case.params)
                if not torch.equal(got, want):
                    report["mismatch"].append(f"{rule} {dtype}")
    report["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught
                          if "lrp_ext" in str(w.message)]
    print("REPORT" + json.dumps(report))
""")


def _run(code):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    for k in ("LRP_EXT_CPU_PATH", "LRP_EXT_CPU_ISA", "LRP_EXT_ASSUME_MIXED"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT")][-1]
    return json.loads(line[len("REPORT"):])


def test_fallback_without_compiled_module():
    rep = _run(BLOCK + BODY)
    assert rep["cpu"] is False and rep["cuda"] is False
    assert rep["op_registered"] is False
    assert rep["mismatch"] == [], f"fallback differs from the reference: {rep['mismatch']}"
    # exactly one warning for 8 rules x 3 dtypes, saying why and what happens instead
    assert len(rep["warnings"]) == 1, rep["warnings"]
    w = rep["warnings"][0]
    assert w.startswith("RuntimeWarning"), w
    assert "lrp_ext._C refused by the test" in w and "reference" in w, w


def test_no_warning_with_compiled_module():
    if not lrp_ext.has_compiled_ops("cpu"):
        pytest.skip("compiled CPU ops are not built")
    rep = _run(BODY)
    assert rep["cpu"] is True and rep["op_registered"] is True
    # float16 has no CPU kernel and quietly uses the reference; no rule/dtype above warns
    assert rep["warnings"] == [], rep["warnings"]
