"""Shared fixtures: kernel configurations (device + code-path environment) and a clean
environment for every test."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, ROOT)

from lrp_ext import testing  # noqa: E402


@pytest.fixture(autouse=True)
def _clean_kernel_env(monkeypatch):
    """No code-path selection leaks in from the caller's environment or another test."""
    for k in testing.ENV_VARS:
        monkeypatch.delenv(k, raising=False)


_FULL = testing.kernel_configs(full=True)
_THIN = testing.kernel_configs(full=False)


@pytest.fixture(params=_FULL, ids=[c.id for c in _FULL])
def kernel(request, monkeypatch):
    """Every code path of the compiled kernels (CPU: path x ISA; CUDA: path).  Skips when the
    compiled ops for the device are not built or the device is missing."""
    testing.apply_config(request.param, monkeypatch, require_compiled=True)
    return request.param


@pytest.fixture(params=_THIN, ids=[c.id for c in _THIN])
def backend(request, monkeypatch):
    """Each device and path (ISA auto) of the public functions; runs the reference fallback
    when the compiled ops are not built (so these tests check the reference too)."""
    testing.apply_config(request.param, monkeypatch, require_compiled=False)
    return request.param


def pytest_configure(config):
    # the fallback's one-time warning is tested in test_fallback.py (in a fresh process)
    config.addinivalue_line(
        "filterwarnings", "ignore:lrp_ext. compiled kernels not available:RuntimeWarning")


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    """Each device with its default code path (CUDA skipped when unavailable)."""
    if request.param == "cuda" and not testing.cuda_available():
        pytest.skip("CUDA is not available")
    return request.param
