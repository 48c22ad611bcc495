#!/usr/bin/env bash
# Installs everything lightning-prune needs on a fresh machine: the pinned CPU-capable torch pair, then the
# package itself with its extras (yolo = ultralytics, onnx = onnx + onnxruntime, openvino = the OpenVINO latency
# backend, so its tests run, dev = tests and lint, docs = the documentation site).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
python -m pip install --quiet --disable-pip-version-check -e ".[yolo,onnx,openvino,dev,docs]"
