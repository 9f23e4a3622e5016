#!/usr/bin/env bash
# Regenerates inference_pb2.py and inference_grpc.py beside this script from inference.proto.
# Needs grpcio-tools (protoc) and grpclib (its protoc plugin): PYTHON=.venv/bin/python by default.
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
