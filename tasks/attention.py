"""Multi-head attention (tf_keras `MultiHeadAttention`) in a narrower student: how many heads and
how large a key it keeps (`narrowed_attention`), and which of its teacher's it keeps, with their
weights (`sliced_attention`).

A `width`-wide student keeps `width` of the heads, each with its teacher's key and value sizes;
only once a single head is left do the key and value sizes shrink. A kept head computes exactly
its teacher head's attention pattern, softmax(q k^T / sqrt(key_dim)), on the same inputs; slicing
every head's key instead would change every pattern. (Michel et al., 2019, "Are Sixteen Heads
Really Better than One?": most of a trained model's heads can go at little cost.) And attention's
int8 time goes by heads (a BATCH_MATMUL pair and a SOFTMAX over tokens x tokens each), not by key
size: measured (benchmarks/transformers.py, 2026-12-08: a 139 k-param ViT on 28x28 digits, width
0.5, distilled 5 epochs, int8, 1 thread), 2 heads of key 16 ran 1.28x faster (1.26-1.30,
interleaved) than 4 heads of key 8 with as many weights, at 92.9 vs 94.4 % test accuracy (one
seed, 2,160 samples): a student is narrowed to be faster, so heads go first.

Heads are ranked by the L1 norm of their value-output circuit W_v,h W_o,h: a head adds to its
output an attention-weighted mean of x W_v,h W_o,h (the weights sum to 1), so that circuit bounds
what it writes. Key dimensions rank by |W_q[:, d]|_1 |W_k[:, d]|_1 (their share of q.k), value
dimensions by |W_v[:, d]|_1 |W_o[d]|_1. Keras scales the query by 1/sqrt(key_dim): a student with
a smaller key gets its query scaled by sqrt(kept / key_dim), so that its kept dimensions score at
the teacher's temperature. Every projection's input rows and the output projection's columns
follow the channels of the tensors they read and write (tasks/channels.py): the output is as wide
as the query (`output_shape` unset), so it carries the query's channels.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tf_keras as keras

# Build shapes in a MultiHeadAttention config: kept, they build a student's layer at the
# teacher's widths ("Inputs have incompatible shapes" at the first narrower residual Add);
# without them its constructor builds it on its first call
BUILD_SHAPES = ("query_shape", "key_shape", "value_shape")


def narrowed_attention(config: dict, width: float,
                       narrowed: Callable[[int, float], int]) -> dict:
    """A MultiHeadAttention `config` for a `width`-wide student's constructor: `width` of its
    heads (at least one), the key and value sizes of a head only cut to what `narrowed` leaves of
    all heads' (tasks/channels.py `narrowed_units`), without BUILD_SHAPES (`from_config` would
    build no weights without them, and warn)."""
    heads = config["num_heads"]
    return {key: item for key, item in config.items() if key not in BUILD_SHAPES} | {
        "num_heads": max(1, round(heads * width)),
        **{size: min(config[size], narrowed(heads * config[size], width))
           for size in ("key_dim", "value_dim")}}


def attention_inputs(spec: dict) -> dict[str, str]:
    """{query, key, value: the layer it reads} of a MultiHeadAttention's functional config `spec`:
    tf_keras stores the query as its input and the others as keyword arguments, in the order the
    call named them; the key is the value unless given."""
    query, _, _, arguments = spec["inbound_nodes"][0][0]
    value = arguments["value"][0]
    return {"query": query, "key": arguments.get("key", [value])[0], "value": value}


def output_norms(layer: keras.layers.MultiHeadAttention) -> np.ndarray:
    """L1 norm of each output channel's column of the output projection."""
    kernel = _weights(layer)["attention_output/kernel"]
    return np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)


def sliced_attention(layer: keras.layers.MultiHeadAttention,
                     student: keras.layers.MultiHeadAttention,
                     channels: dict[str, np.ndarray]) -> list[np.ndarray]:
    """`layer`'s weights for `student`: its strongest heads, and in each their strongest key and
    value dimensions, as many as `student` has; each projection's input rows those of `channels`
    (source indices by role: query, key, value), the output's columns the query's."""
    weights, sizes = _weights(layer), student.get_config()
    query, key, value, output = (weights[f"{part}/kernel"]
                                 for part in ("query", "key", "value", "attention_output"))
    circuits = np.abs(np.einsum("ihv,hvo->hio", value, output)).sum(axis=(1, 2))
    heads = strongest(circuits, sizes["num_heads"])
    spans = {"key": np.abs(query).sum(axis=0) * np.abs(key).sum(axis=0),
             "value": np.abs(value).sum(axis=0) * np.abs(output).sum(axis=-1)}  # heads x dims
    dims = {span: strongest(norms[heads], sizes[f"{span}_dim"]) for span, norms in spans.items()}
    heads = heads[:, None]  # with `dims`, indexes (kept heads, kept dims)
    scale = np.sqrt(sizes["key_dim"] / layer.get_config()["key_dim"])
    sliced = []
    for name, weight in weights.items():
        part, kind = name.split("/")
        if part == "attention_output":
            weight = weight[heads, dims["value"]] if kind == "kernel" else weight
            sliced.append(weight[..., channels["query"]])
            continue
        if kind == "kernel":
            weight = weight[channels[part]]
        weight = weight[..., heads, dims["value" if part == "value" else "key"]]
        sliced.append(weight * scale if part == "query" else weight)
    return sliced


def strongest(norms: np.ndarray, size: int) -> np.ndarray:
    """The indices of the `size` largest `norms` (along the last axis), ascending."""
    return np.sort(np.argsort(-norms, axis=-1, kind="stable")[..., :size], axis=-1)


def _weights(layer: keras.layers.MultiHeadAttention) -> dict[str, np.ndarray]:
    """`layer`'s weights in its order, by projection and kind: "query/kernel", ...,
    "attention_output/bias" (biases absent without `use_bias`)."""
    return {"/".join(weight.name.split(":")[0].split("/")[-2:]): weight.numpy()
            for weight in layer.weights}
