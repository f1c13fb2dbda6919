"""Request bodies to arrays and results to response bodies, for the server's two APIs.

- The Open Inference Protocol (KServe v2, as Triton speaks it): typed tensors in JSON, or the
  binary tensor extension (a JSON header of ``Inference-Header-Content-Length`` bytes followed
  by the raw tensors), so existing clients (``tritonclient``, KServe's) work unchanged.
- dlforge's convenience API (``/v1/predict``): ``{"inputs": [[...]]}`` as JSON, a ``.npy`` body,
  or PNG/JPEG images run through the model's stored preprocessing.

Everything here raises ``InputError`` with a message naming what was expected; nothing here
evaluates or unpickles what a client sent.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

import numpy as np

from dlforge.deploy.session import InputError, Session, softmax

# Open Inference Protocol datatypes (BYTES, strings, is refused: models here take numbers).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(bool),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
OUTPUTS = ("logits", "probabilities", "class")  # class: the decided class ids
HEADER_LENGTH = "inference-header-content-length"


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except RecursionError:  # lists nested thousands deep
        raise InputError("the body's JSON is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, integers of thousands of digits
        raise InputError(
            f"the body is not valid JSON ({' '.join(str(exc).split())[:200]})"
        ) from None


def as_array(value: Any, what: str, dtype: np.dtype[Any] | None = None) -> np.ndarray:
    """A nested list of numbers as an array; ragged lists, strings and objects are refused."""
    if not isinstance(value, list):
        raise InputError(f"{what} must be a (nested) list of numbers, not {type(value).__name__}")
    try:
        arr = np.asarray(value)  # no dtype yet: numpy would parse strings into numbers
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        reason = "lists of different lengths" if "inhomogeneous" in str(exc) else str(exc)[:200]
        raise InputError(f"{what} is not an array of numbers ({reason})") from None
    if arr.dtype.kind not in "fiub":
        raise InputError(f"{what} is not an array of numbers (it holds {arr.dtype} values)")
    if dtype is not None:
        try:
            arr = arr.astype(dtype)
        except (ValueError, OverflowError) as exc:
            raise InputError(f"{what} does not fit {dtype} ({exc})") from None
    return arr


def read_npy(body: bytes) -> np.ndarray:
    """A ``.npy`` body, loaded without unpickling (object arrays are refused); its header's
    shape must fit the bytes that follow (numpy would allocate what the header claims)."""
    buf = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(buf)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)  # fmt: skip
        shape, _, dtype = read_header(buf)
        claimed = math.prod(shape) * dtype.itemsize
        if claimed > len(body):
            raise InputError(
                f"the .npy header claims shape {shape} ({claimed} bytes) but the body holds "
                f"{len(body)} bytes"
            )
        arr = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"the body is not a readable .npy array ({exc})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiub":
        raise InputError("the .npy body must hold one numeric array")
    return arr


# ---- dlforge's /v1/predict -------------------------------------------------------------------


def v1_inputs(payload: Any) -> np.ndarray:
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise InputError('the JSON body must be an object with an "inputs" array')
    return as_array(payload["inputs"], '"inputs"')


def v1_response(session: Session, logits: np.ndarray) -> dict[str, Any]:
    proba = softmax(logits)
    ids = session.decide(logits)
    return {
        "classes": session.labels(ids),
        "indices": ids.tolist(),
        "probabilities": np.round(proba, 6).tolist(),
        "class_names": session.class_names,
    }


# ---- the Open Inference Protocol (v2) --------------------------------------------------------


def split_binary(body: bytes, header_length: str | None) -> tuple[Any, bytes]:
    """The JSON part of a v2 request and the binary tensors after it (empty without them)."""
    if header_length is None:
        return parse_json(body), b""
    try:
        n = int(header_length)
    except ValueError:
        raise InputError(
            f"Inference-Header-Content-Length '{header_length}' is not a number"
        ) from None
    if not 0 < n <= len(body):
        raise InputError(
            f"Inference-Header-Content-Length {n} does not fit a body of {len(body)} bytes"
        )
    return parse_json(body[:n]), body[n:]


def v2_input(payload: Any, binary: bytes, session: Session, input_name: str) -> np.ndarray:
    """The one input tensor of an inference request, checked against its declared shape."""
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
        raise InputError('the request must be a JSON object with an "inputs" list')
    inputs = payload["inputs"]
    if len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InputError(f'the model takes one input tensor, "{input_name}"; got {len(inputs)}')
    spec = inputs[0]
    name, shape, datatype = spec.get("name"), spec.get("shape"), spec.get("datatype")
    if name != input_name:
        raise InputError(f'input "{name}" is unknown; the model\'s input is "{input_name}"')
    if (
        not isinstance(shape, list)
        or len(shape) > 32
        or not all(type(d) is int and d >= 0 for d in shape)  # bool is an int subclass: refused
    ):
        raise InputError(
            f'input "{name}": "shape" must be a list of at most 32 non-negative integers'
        )
    if datatype not in DATATYPES:
        raise InputError(
            f'input "{name}": datatype {datatype!r} is not one of {", ".join(DATATYPES)}'
        )
    dtype = DATATYPES[datatype]
    count = math.prod(shape)  # Python integers: no silent overflow
    params = spec.get("parameters") or {}
    if not isinstance(params, dict):
        raise InputError(f'input "{name}": "parameters" must be an object')
    unknown = set(params) - {"binary_data_size"}
    if unknown:
        raise InputError(f'input "{name}": parameters {sorted(unknown)} are not supported')
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if not isinstance(size, int) or size != len(binary):
            raise InputError(
                f'input "{name}": binary_data_size {size!r} but {len(binary)} bytes follow'
            )
        if size != count * dtype.itemsize:
            raise InputError(
                f'input "{name}": {size} bytes of {datatype} do not make shape {shape}'
            )
        arr = np.frombuffer(binary, dtype=dtype)
    else:
        if "data" not in spec:
            raise InputError(f'input "{name}" has neither "data" nor binary data')
        arr = as_array(spec["data"], f'input "{name}" data', dtype).ravel()
        if arr.size != count:
            raise InputError(f'input "{name}": {arr.size} values do not make shape {shape}')
    x = arr.reshape(shape)
    expected = session.input_shape
    if expected and tuple(x.shape[1:]) != expected:
        raise InputError(
            f'input "{name}" of shape {list(x.shape)}; the model expects [N, '
            f"{', '.join(map(str, expected))}]"
        )
    return x


def v2_outputs(payload: dict[str, Any]) -> list[tuple[str, bool]]:
    """The requested outputs and whether each goes back as binary data."""
    params = payload.get("parameters") or {}
    if not isinstance(params, dict):
        raise InputError('the request\'s "parameters" must be an object')
    default_binary = bool(params.get("binary_data_output", False))
    requested = payload.get("outputs")
    if requested is None:
        return [(name, default_binary) for name in OUTPUTS]
    if not isinstance(requested, list):
        raise InputError('"outputs" must be a list')
    out = []
    for spec in requested:
        name = spec.get("name") if isinstance(spec, dict) else None
        if name not in OUTPUTS:
            raise InputError(f"output {name!r} is unknown; the outputs are {', '.join(OUTPUTS)}")
        out_params = spec.get("parameters") or {}
        if not isinstance(out_params, dict):
            raise InputError(f'output "{name}": "parameters" must be an object')
        unknown = set(out_params) - {"binary_data"}
        if unknown:  # e.g. Triton's class_count: a classification extension we do not serve
            raise InputError(f'output "{name}": parameters {sorted(unknown)} are not supported')
        binary = out_params.get("binary_data", default_binary)
        out.append((name, bool(binary)))
    return out


def v2_response(
    model_name: str, payload: dict[str, Any], logits: np.ndarray, session: Session
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: JSON, or JSON then binary tensors."""
    tensors: dict[str, np.ndarray] = {
        "logits": logits.astype(np.float32),
        "probabilities": softmax(logits).astype(np.float32),
        "class": session.decide(logits).astype(np.int64),
    }
    header: dict[str, Any] = {"model_name": model_name, "model_version": "1", "outputs": []}
    if isinstance(payload.get("id"), str):
        header["id"] = payload["id"]
    blobs = []
    for name, binary in v2_outputs(payload):
        t = tensors[name]
        datatype = "INT64" if t.dtype == np.int64 else "FP32"
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(t.shape)}
        if binary:
            blob = np.ascontiguousarray(t).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = t.ravel().tolist()
        header["outputs"].append(entry)
    head = json.dumps(header, allow_nan=False).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {
        "content-type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(head)),
    }


def v2_metadata(model_name: str, session: Session, platform: str) -> dict[str, Any]:
    classes = len(session.class_names) or -1
    return {
        "name": model_name,
        "versions": ["1"],
        "platform": platform,
        "inputs": [
            {"name": session.model.input_name, "datatype": "FP32",
             "shape": [-1, *session.input_shape]}
        ],
        "outputs": [
            {"name": "logits", "datatype": "FP32", "shape": [-1, classes]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
            {"name": "class", "datatype": "INT64", "shape": [-1]},
        ],
    }  # fmt: skip
