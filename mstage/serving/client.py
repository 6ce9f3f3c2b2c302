"""A small tritonclient wrapper: numpy in, numpy out, one-line errors naming the address.

`RecommenderClient` asks the ensemble for recommendations; `infer` sends any named arrays.
With Triton batching on, a one-value-per-row column travels as `[B, 1]`; the client reads
the model's config once to shape requests and flattens such outputs back to `[B]`.
HTTP clients are not thread-safe: use one client per thread. Close clients (or use `with`)
before stopping a server: an open keep-alive connection delays its shutdown.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mstage.columns import FALLBACK, ITEM_IDS, PAD, SCORES, TOP_K, TRITON_DTYPES, USER_ID
from mstage.errors import ServerError, UsageError
from mstage.pipeline.recommender import Recommendations
from mstage.serving.repository import ENSEMBLE

PROTOCOLS = ("grpc", "http")


class TritonClient:
    """Send numpy arrays to one model of a Triton server over gRPC or HTTP."""

    def __init__(self, url: str, model: str, protocol: str = "grpc", timeout_s: float = 30.0):
        if protocol not in PROTOCOLS:
            raise UsageError(f"expected protocol grpc or http, found {protocol!r}")
        self.url, self.model, self.protocol, self.timeout_s = url, model, protocol, timeout_s
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        self._module = module
        self._client: Any = None
        self._model_config: dict[str, Any] | None = None
        try:
            self._client = (module.InferenceServerClient(url) if protocol == "grpc" else
                            module.InferenceServerClient(url, connection_timeout=timeout_s,
                                                         network_timeout=timeout_s))
        except Exception as e:  # noqa: BLE001 - a malformed url fails here, one line
            raise ServerError(f"expected a Triton address HOST:PORT, found {url!r} ({e})") from None

    @property
    def address(self) -> str:
        return f"{self.protocol}://{self.url}"

    def _config(self) -> dict[str, Any]:
        """The model's config (max_batch_size, inputs, outputs), fetched once."""
        if self._model_config is None:
            if self.protocol == "grpc":
                config = self._call(self._client.get_model_config, self.model, as_json=True)
                config = config["config"]
            else:
                config = self._call(self._client.get_model_config, self.model)
            self._model_config = config
        return self._model_config

    def _dims(self, kind: str) -> dict[str, list[int]]:
        return {t["name"]: [int(d) for d in t.get("dims", [])] for t in self._config()[kind]}

    @property
    def input_names(self) -> list[str]:
        return list(self._dims("input"))

    @property
    def max_batch_size(self) -> int:
        """The model's max_batch_size: the most rows one request may carry (0: no batching)."""
        return int(self._config().get("max_batch_size", 0))

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on `{name: array}` (first dim = rows); `{output name: array}`.

        With Triton batching, a `[B]` array for a `dims: [1]` input is sent as `[B, 1]` and
        a `dims: [1]` output comes back as `[B]`.
        """
        config = self._config()
        batching = int(config.get("max_batch_size", 0)) > 0
        one_per_row = {n for n, d in self._dims("input").items() if batching and d == [1]}
        for spec in config["input"]:
            if spec["name"] not in inputs and not spec.get("optional", False):
                raise UsageError(f"expected input {spec['name']!r} for model {self.model!r}, "
                                 f"found only {sorted(inputs)}")
        tensors = []
        for name, array in inputs.items():
            array = np.ascontiguousarray(array)
            if name in one_per_row and array.ndim == 1:
                array = array.reshape(-1, 1)
            if array.dtype.name not in TRITON_DTYPES:
                raise UsageError(f"expected numeric input {name!r}, found {array.dtype}")
            tensor = self._module.InferInput(name, list(array.shape),
                                             TRITON_DTYPES[array.dtype.name])
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        result = self._call(self._client.infer, self.model, tensors)
        outputs = {}
        for name, dims in self._dims("output").items():
            array = result.as_numpy(name)
            if array is not None:
                outputs[name] = array[:, 0] if batching and dims == [1] else array
        return outputs

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from http.client import HTTPException

        from tritonclient.utils import InferenceServerException

        if self.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout_s
        try:
            return fn(*args, **kwargs)
        except InferenceServerException as e:
            text = " ".join(str(e.message() or e).split())
            if "Failed parsing HTTP/2" in text:  # an HTTP/1.1 server: Triton's HTTP port?
                raise self._wrong_protocol(text) from None
            unreachable = ("UNAVAILABLE" in str(e.status()) or "failed to connect" in text
                           or "Connection refused" in text)
            if unreachable:
                raise self._unreachable(text) from None
            raise ServerError(f"Triton at {self.address} answered model {self.model!r} with an "
                              f"error: {text}") from None
        except HTTPException as e:  # not HTTP/1.x at all: a gRPC (HTTP/2) port
            raise self._wrong_protocol(" ".join(str(e).split())) from None
        except OSError as e:
            raise self._unreachable(str(e)) from None

    def _wrong_protocol(self, detail: str) -> ServerError:
        other = "grpc" if self.protocol == "http" else "http"
        return ServerError(f"expected a Triton {self.protocol} endpoint at {self.address}, "
                           f"found a server speaking another protocol ({detail}); pass "
                           f"--protocol {other}, or the {self.protocol} port (serving."
                           f"{self.protocol}_port)")

    def _unreachable(self, detail: str) -> ServerError:
        return ServerError(f"expected a Triton server at {self.address}, found none answering "
                           f"({detail}); start one with `mstage serve` or check --server")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> TritonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RecommenderClient(TritonClient):
    """Recommendations from a served mstage ensemble; implements `Recommends`.

    `recommend(user_ids [B], top_k)` returns `Recommendations` as the in-process recommender
    does (ids -1 padded, best first), cut to `top_k`. `top_k` travels as the `top_k` input
    when the ensemble has one; requests larger than the model's max_batch_size are split.
    """

    def __init__(self, url: str, protocol: str = "grpc", model: str = ENSEMBLE,
                 timeout_s: float = 30.0):
        super().__init__(url, model, protocol, timeout_s)

    @property
    def batch_size(self) -> int:
        """Users per request: the model's max_batch_size (256 when it does not batch)."""
        return self.max_batch_size or 256

    def recommend(self, user_ids: Any, top_k: int | None = None) -> Recommendations:
        users = np.asarray(user_ids, dtype=np.int64).reshape(-1)
        if top_k is not None and top_k < 1:
            raise UsageError(f"expected top_k >= 1, found {top_k}")
        parts = [self._recommend_chunk(users[start:start + self.batch_size], top_k)
                 for start in range(0, len(users), self.batch_size)]
        width = max((items.shape[1] for items, _, _ in parts), default=0)
        return Recommendations(
            np.concatenate([_widen(p[0], width, PAD) for p in parts]).astype(np.int64),
            np.concatenate([_widen(p[1], width, -np.inf) for p in parts]).astype(np.float32),
            np.concatenate([p[2] for p in parts]).astype(bool), [])

    def _recommend_chunk(self, users: np.ndarray, top_k: int | None):
        """(item ids [b, <= top_k], scores [b, <= top_k], fallback [b]) for one request."""
        request = {USER_ID: users}
        if top_k is not None and TOP_K in self.input_names:
            request[TOP_K] = np.full(len(users), top_k, dtype=np.int64)
        out = self.infer(request)
        if ITEM_IDS not in out or SCORES not in out:
            raise ServerError(f"expected outputs item_ids and scores from model {self.model!r} at "
                              f"{self.address}, found {sorted(out)}; rebuild it with "
                              "`mstage build-ensemble`")
        fallback = out.get(FALLBACK, np.zeros(len(users), dtype=np.int8)).reshape(-1)
        return (np.atleast_2d(out[ITEM_IDS])[:, :top_k], np.atleast_2d(out[SCORES])[:, :top_k],
                fallback)


def _widen(matrix: np.ndarray, width: int, fill: float) -> np.ndarray:
    """Right-pad a [b, w] matrix with `fill` to `width` columns."""
    return np.pad(matrix, ((0, 0), (0, width - matrix.shape[1])), constant_values=fill)
