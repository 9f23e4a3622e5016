#!/usr/bin/env bash
# Regenerates model_config_pb2.py beside this script from model_config.proto (Triton's, from
# triton-inference-server/common protobuf/model_config.proto, with its package renamed; see
# README.md here). Needs grpcio-tools 1.81.0 (protoc 33.5, gencode for protobuf 6.33.x), a build
# tool and not a dependency: pip install --no-deps --target /tmp/gt grpcio-tools==1.81.0, then
# PYTHONPATH=/tmp/gt config/triton_pb/generate.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-$here/../../.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/inferd/config/triton_pb"
cp "$here/model_config.proto" "$tmp/inferd/config/triton_pb/"
"$py" -m grpc_tools.protoc -I "$tmp" --python_out="$tmp" "$tmp/inferd/config/triton_pb/model_config.proto"
cp "$tmp/inferd/config/triton_pb/model_config_pb2.py" "$here/"
