#!/usr/bin/env bash
# Regenerates inference_pb2.py and inference_grpc.py beside this script from inference.proto.
# Needs grpcio-tools (protoc) and grpclib (its protoc plugin): PYTHON=.venv/bin/python by default.
# Use grpcio-tools 1.81.0 (protoc 33.5: "Protobuf Python Version: 6.33.5" gencode, which the
# protobuf>=6.33.5,<7 runtime accepts; newer grpcio-tools write 7.x gencode that runtime refuses).
# It is a build tool, not a dependency: e.g. pip install --target /tmp/gt grpcio-tools==1.81.0
# --no-deps, then PYTHONPATH=/tmp/gt daemon/frontends/grpc_gen/generate.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-$here/../../../.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Generate under the installed package path so the generated imports say inferd.daemon.frontends.grpc_gen.
mkdir -p "$tmp/inferd/daemon/frontends/grpc_gen"
cp "$here/inference.proto" "$tmp/inferd/daemon/frontends/grpc_gen/"
PATH="$(dirname "$py"):$PATH" "$py" -m grpc_tools.protoc -I "$tmp" \
  --python_out="$tmp" --grpclib_python_out="$tmp" "$tmp/inferd/daemon/frontends/grpc_gen/inference.proto"
cp "$tmp/inferd/daemon/frontends/grpc_gen/inference_pb2.py" "$tmp/inferd/daemon/frontends/grpc_gen/inference_grpc.py" "$here/"
