"""One inference through tritonclient's gRPC client, run in a subprocess (the pytest process
never imports the gRPC stack, see tests/unit/test_architecture.py): numpy in, numpy out.

    outputs = grpc_infer(daemon, "model", {"input": rows})
"""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap

import numpy as np

_CALL = textwrap.dedent('''
    import io, sys
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    arrays = np.load(io.BytesIO(sys.stdin.buffer.read()), allow_pickle=True)
    inputs = []
    for name in arrays.files:
        tensor = grpcclient.InferInput(name, list(arrays[name].shape), np_to_triton_dtype(arrays[name].dtype))
        tensor.set_data_from_numpy(arrays[name])
        inputs.append(tensor)
    result = grpcclient.InferenceServerClient(sys.argv[1]).infer(sys.argv[2], inputs)
    names = [o.name for o in result.get_response().outputs]
    out = io.BytesIO()
    np.savez(out, **{n: result.as_numpy(n) for n in names})
    sys.stdout.buffer.write(out.getvalue())
''')


def grpc_infer(daemon, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`model`'s outputs for `inputs` over the daemon's gRPC listener (BYTES as object arrays)."""
    [address] = [e["address"] for e in daemon.events("listening") if e["frontend"] == "grpc"]
    arrays = io.BytesIO()
    np.savez(arrays, **inputs)
    done = subprocess.run([sys.executable, "-c", _CALL, address, model], input=arrays.getvalue(),
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    with np.load(io.BytesIO(done.stdout), allow_pickle=True) as answer:
        return {name: answer[name] for name in answer.files}
