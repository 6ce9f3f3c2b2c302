"""A plain tritonclient gRPC request, with no mstage code on the client side."""

from __future__ import annotations

import numpy as np


def raw_infer(grpc_url: str, model: str, arrays: dict[str, tuple[np.ndarray, str]]):
    """`arrays`: input name -> (array, Triton dtype such as "INT64"); the InferResult."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        inputs = []
        for name, (array, dtype) in arrays.items():
            tensor = grpcclient.InferInput(name, list(array.shape), dtype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        return client.infer(model, inputs)
    finally:
        client.close()
