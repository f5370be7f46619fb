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


def _ops_extension():
    # -g0: debug info makes each object ~17 MB and the build ~50% slower.
    cxx_flags = ["-O3", "-g0", "-std=c++20"]
    sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    if _want_cuda():
        cuda_sources = _sources("csrc/cuda/*.cu") + _sources("csrc/cuda/*.cpp")
        return cpp_extension.CUDAExtension(
            "kfac_ext._C",
            sources + cuda_sources,
            extra_compile_args={
                "cxx": cxx_flags + ["-DKFAC_EXT_WITH_CUDA"],
                "nvcc": ["-O3", "-DKFAC_EXT_WITH_CUDA", "--expt-relaxed-constexpr"],
            },
            libraries=["cusolver", "cublas"],
        )
    return cpp_extension.CppExtension(
        "kfac_ext._C", sources, extra_compile_args={"cxx": cxx_flags}
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
    install_requires=[
        "torch>=2.4",
        "numpy",
        "tqdm",
        "matplotlib",
        "highspy",
        "scikit-learn",
    ],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "pytest-timeout", "hypothesis"],
    },
    entry_points={"console_scripts": ["kfac-ext=kfac_ext.cli:main"]},
)
