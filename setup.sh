#!/usr/bin/env bash
# Set up edge-compress on a fresh Debian machine with Python 3.11: the Fashion-MNIST and R modeldata
# (small_fine_foods text) data packages,
# a virtual environment at .venv, and the exact pinned requirements. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

need_apt=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need_apt+=(dataset-fashion-mnist)
[ -f /usr/lib/R/site-library/modeldata/data/Rdata.rdb ] || need_apt+=(r-cran-modeldata)  # small_fine_foods reviews
if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null; then need_apt+=(chromium); fi
# the SSH bench tests start their own sshd on 127.0.0.1 (tests/device_env.py); rsync copies bundles
if [ "${1:-}" = "--test" ] && [ ! -x /usr/sbin/sshd ]; then need_apt+=(openssh-server); fi
if [ "${1:-}" = "--test" ] && ! command -v rsync >/dev/null; then need_apt+=(rsync); fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "setup.sh: please install the Debian packages: sudo apt-get install ${need_apt[*]}" >&2
    exit 1
  fi
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch first and alone, pinned: a resolver left to itself would fetch a multi-GB CUDA build.
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
if [ "${1:-}" = "--test" ]; then
  # torchvision + timm for the zoo tests and benchmark, with --no-deps so that no resolver can replace the
  # CPU torch (their dependencies are all in requirements.txt; see benchmarks/requirements-zoo.txt).
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -r benchmarks/requirements-zoo.txt
fi
echo "setup.sh: ready (.venv, $(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
