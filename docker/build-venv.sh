#!/bin/sh
# Builds cache-buster's runtime: the project's wheel, installed with its runtime dependencies
# only (no extras) under the committed constraints.txt into a fresh venv. The Dockerfile's
# builder stage runs this script and tests/test_image_build.py runs it too, so the test
# exercises the very steps the image is built with.
#
# usage: docker/build-venv.sh SOURCE_DIR VENV_DIR
#   PYTHON      interpreter the venv is made from (default python3). The venv links to it, so
#               the runtime image must have it at the same path (same base image).
#   PIP_PYTHON  interpreter that runs pip (default $PYTHON). pip installs into the venv with
#               --python, so the venv carries no pip: less to patch, nothing to install with.
set -eu

if [ $# -ne 2 ]; then
    echo "usage: $0 SOURCE_DIR VENV_DIR" >&2
    exit 64
fi
src=$1
venv=$2
python=${PYTHON:-python3}
pip_python=${PIP_PYTHON:-$python}

wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT INT TERM

# The project's own wheel only; its dependencies come from the index under the constraints.
"$pip_python" -m pip wheel --no-input --no-deps --wheel-dir "$wheels" "$src"
set -- "$wheels"/cache_buster-*.whl
if [ $# -ne 1 ] || [ ! -f "$1" ]; then
    echo "build-venv: expected exactly one cache_buster wheel, found: $*" >&2
    exit 1
fi
wheel=$1

"$python" -m venv --without-pip "$venv"
# Binary wheels only: the slim image has no compiler, and an sdist build would be unpinned code.
"$pip_python" -m pip --python "$venv/bin/python" install --no-input --only-binary=:all: \
    --constraint "$src/constraints.txt" "$wheel"
"$pip_python" -m pip --python "$venv/bin/python" check
# Smoke test: the console script starts and its dispatcher imports.
"$venv/bin/cache-buster" --help >/dev/null
