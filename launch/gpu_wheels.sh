#!/usr/bin/env bash
# Download, on this machine, the wheels a GPU machine of this workplace lacks for fm-agent's GPU checks
# (launch/gpu_checks.sh): its image has CUDA torch, Triton and an older transformers, but not this
# project's pins nor its CLI's and server's dependencies. Python 3.12, manylinux x86-64, no dependencies
# resolved (the image provides the rest). Writes .whl/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
for pin in transformers==5.23.0 tyro==1.0.17 docstring-parser==0.18.0 typeguard==4.6.1 typing-extensions==4.16.0 \
           protobuf==7.36.2 grpcio==1.85.1 grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1 \
           websockets==17.4 msgpack==1.2.4; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "$pin"
done
ls .whl
