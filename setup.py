"""Builds kfac_ext._C (the K-FAC custom ops) and kfac_ext.placement._dp.

CPU kernels are always built. CUDA kernels (csrc/cuda/) are added when torch
is a CUDA build and a CUDA toolkit is found, or when KFAC_EXT_FORCE_CUDA=1;
KFAC_EXT_NO_CUDA=1 turns them off. Build without isolation so that pip does
not fetch a second torch:  pip install -e . --no-build-isolation
"""

import glob
import os

from setuptools import Extension, find_packages, setup
from torch.utils import cpp_extension

HERE = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern):
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


def _want_cuda():
    if os.environ.get("KFAC_EXT_NO_CUDA") == "1":
        return False
    if os.environ.get("KFAC_EXT_FORCE_CUDA") == "1":
        return True
    import torch

    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def _find_cuda_library(name):
    """(directory, link flag) for lib<name>: the toolkit's lib64 first, then the
    nvidia-* wheels next to torch (CUDA torch builds use those; they ship only
    versioned names such as libcusolver.so.12, hence -l:<file>)."""
    import sysconfig

    toolkit = os.environ.get("CUDA_HOME") or cpp_extension.CUDA_HOME or "/usr/local/cuda"
    dirs = [os.path.join(toolkit, "lib64"), os.path.join(toolkit, "lib")]
    dirs += sorted(glob.glob(os.path.join(sysconfig.get_paths()["purelib"], "nvidia", "*", "lib")))
    for d in dirs:
        if os.path.exists(os.path.join(d, f"lib{name}.so")):
            return d, f"-l{name}"
        versioned = sorted(glob.glob(os.path.join(d, f"lib{name}.so.[0-9]*")), key=len)
        if versioned:
            return d, "-l:" + os.path.basename(versioned[0])
    return None, f"-l{name}"  # let the linker search its default paths


def _cuda_link_and_include():
    """Include dirs and link args for cuBLAS and cuSOLVER, wherever they live:
    headers from the same place as the library (a wheel's include/ beside its
    lib/; the toolkit's include/ is on CUDAExtension's path already), and an
    rpath so that the extension finds the library at import time."""
    include_dirs, link_args = [], []
    for name in ("cusolver", "cublas"):
        directory, flag = _find_cuda_library(name)
        if directory:
            include = os.path.join(os.path.dirname(directory), "include")
            if "nvidia" in directory and os.path.isdir(include) and include not in include_dirs:
                include_dirs.append(include)
            link_args += [f"-L{directory}", f"-Wl,-rpath,{directory}"]
        link_args.append(flag)
    return include_dirs, link_args


def _openmp_flags():
    # ATen's at::parallel_for is a header template: with torch's OpenMP backend
    # it is a `#pragma omp parallel`, which compiles to a serial loop unless
    # the extension itself is built with -fopenmp. Linking -fopenmp names
    # libgomp.so.1, the soname torch already loaded, so one thread pool serves
    # both (and torch.set_num_threads applies to our kernels).
    import torch

    return ["-fopenmp"] if torch.backends.openmp.is_available() and os.name == "posix" else []


def _ops_extension():
    # -g0: debug info makes each object ~17 MB and the build ~50% slower.
    openmp = _openmp_flags()
    cxx_flags = ["-O3", "-g0", "-std=c++20"] + openmp
    sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    if _want_cuda():
        cuda_sources = _sources("csrc/cuda/*.cu") + _sources("csrc/cuda/*.cpp")
        include_dirs, link_args = _cuda_link_and_include()
        return cpp_extension.CUDAExtension(
            "kfac_ext._C",
            sources + cuda_sources,
            include_dirs=include_dirs,
            extra_compile_args={
                "cxx": cxx_flags + ["-DKFAC_EXT_WITH_CUDA"],
                "nvcc": ["-O3", "-DKFAC_EXT_WITH_CUDA", "--expt-relaxed-constexpr"],  # -std: torch picks it
            },
            extra_link_args=link_args + openmp,
        )
    return cpp_extension.CppExtension(
        "kfac_ext._C", sources, extra_compile_args={"cxx": cxx_flags}, extra_link_args=openmp
    )


def _placement_extension():
    # Plain C++17 solver; only pybind11 (shipped inside torch's include dir) binds it.
    return Extension(
        "kfac_ext.placement._dp",
        _sources("csrc/placement/*.cpp"),
        include_dirs=cpp_extension.include_paths(),
        extra_compile_args=["-O3", "-g0", "-std=c++17", "-fvisibility=hidden"],
        language="c++",
    )


APP_REQUIRES = ["tqdm", "matplotlib", "scikit-learn"]
PLACEMENT_REQUIRES = ["highspy", "matplotlib"]
# ruff and mypy pinned: a newer ruff formats differently and a newer mypy finds
# new errors, and `make test` must pass on a fresh machine as it does here.
TEST_REQUIRES = [
    "pytest",
    "pytest-benchmark",
    "pytest-timeout",
    "hypothesis",
    "ruff==0.17.6",
    "mypy==2.4.1",
    # the GPT-2 / BERT coverage tests build tiny models from configs (no weights
    # downloaded); the Makefile installs it with the torch pin.
    "transformers",
]

ext_modules = [_ops_extension()]
if _sources("csrc/placement/*.cpp"):
    ext_modules.append(_placement_extension())

setup(
    name="kfac_ext",
    version="0.1.0",
    description="Distributed K-FAC preconditioning and optimal device placement for PyTorch",
    packages=find_packages(include=["kfac_ext", "kfac_ext.*"]),
    ext_modules=ext_modules,
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(no_python_abi_suffix=False)},
    python_requires=">=3.10",
    # The preconditioner needs torch alone (numpy: the eigendecomposition
    # assignment's solver). The application and the MILP placement are extras.
    install_requires=["torch>=2.4", "numpy"],
    extras_require={
        "app": APP_REQUIRES,  # kfac-ext train / bench: progress bars, plots, digits
        "placement": PLACEMENT_REQUIRES,  # kfac-ext place --method milp (HiGHS), --plot
        # kfac-ext train --optimizer soap. Install it with the torch pin as a constraint
        # (the Makefile does): pip must not upgrade the pinned torch for it.
        "soap": ["heavyball"],
        "test": sorted(set(TEST_REQUIRES + APP_REQUIRES + PLACEMENT_REQUIRES)),
    },
    entry_points={"console_scripts": ["kfac-ext=kfac_ext.cli:main"]},
)
