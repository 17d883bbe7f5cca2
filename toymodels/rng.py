"""A counter-based random number generator: every value is a hash of (key, counter).

Each instance owns two 32-bit keys per stream, derived from its seed alone. The keys of one
step are the instance's keys folded with the step number (:func:`step_keys`), and within a step
the counter enumerates (feature, row). A value is ``hash(hash(counter ^ k1) ^ k2)``. So an
instance's data never depends on which other instances share the tensors, the device, or the
order of evaluation; no generator state is carried between steps; and the stream never repeats:
a step's 64 key bits are a hash of the step, so two steps share keys only by a 2⁻⁶⁴-scale
accident, for any number of steps, features and rows (the counter of one step must fit 32 bits:
n_features × rows ≤ 2³¹). The hash is ``lowbias32`` (Wellons), evaluated in wrapping int32
arithmetic, which vectorises on CPUs and GPUs and gives bit-identical results in eager and
compiled code.
"""

from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1
_C1 = 0x7FEB352D
_C2 = 0x846CA68B - (1 << 32)  # as a signed int32
_GOLDEN = 0x9E3779B9 - (1 << 32)  # as a signed int32

MAX_COUNTER = 1 << 31
"""Values one step may draw per instance (features × rows): the counter is a non-negative int32."""

STREAM_TRAIN = 1
STREAM_EVAL = 2
STREAM_SETS = 3
STREAM_EVAL_SETS = 4
STREAM_INIT = 5
STREAM_SELECT = 6
STREAM_SELECT_SETS = 7
STREAM_DATASET = 8
STREAM_DATASET_SETS = 9


def _signed32(x: int) -> int:
    x &= 0xFFFFFFFF
    return x - (1 << 32) if x >= (1 << 31) else x


def splitmix64(x: int) -> int:
    """One step of SplitMix64 on a Python int: a well-mixed 64-bit value."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def instance_keys(seed: int, stream: int) -> tuple[int, int]:
    """Two signed 32-bit keys of one instance's stream, a function of (seed, stream) only."""
    h = splitmix64(splitmix64(seed & _MASK64) ^ (stream * 0xD1B54A32D192ED03 & _MASK64))
    return _signed32(h), _signed32(h >> 32)


def keys_tensor(seeds: list[int], stream: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Keys of many instances: int32 tensor of shape [instances, 2, 1, 1]."""
    ks = [instance_keys(s, stream) for s in seeds]
    return torch.tensor(ks, dtype=torch.int32, device=device).view(len(seeds), 2, 1, 1)


def lowbias32(x: torch.Tensor) -> torch.Tensor:
    """The lowbias32 integer hash on an int32 tensor (logical shifts emulated by masking)."""
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * _C1
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * _C2
    return x ^ ((x >> 16) & 0xFFFF)


def step_keys(keys: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """The keys of one step: each instance's keys folded with the step number.

    keys: int32 [instances, 2, 1, 1]; step: int32 tensor broadcastable against [1, 1, k, 1]
    (a scalar for one step, or k consecutive steps laid along the third axis).
    Returns int32 [instances, 2, k, 1] (k = 1 for a scalar step).
    """
    s = lowbias32(step.view(1, 1, -1, 1) ^ _GOLDEN)
    k1 = lowbias32(keys[:, 0:1] ^ s)
    k2 = lowbias32((keys[:, 1:2] + s) ^ _C1)
    return torch.cat([k1, k2], dim=1)


def row_keys(keys: torch.Tensor, step: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The keys of some rows of one step: the step's keys (:func:`step_keys`) folded with each row index.

    keys: int32 [instances, 2, 1, 1]; step: int32 0-d; rows: int32 [R]. Returns int32 [instances, 2, R, 1].
    """
    return step_keys(step_keys(keys, step), rows)


def _bits24(counter: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    h = lowbias32(lowbias32(counter ^ keys[:, 0:1]) ^ keys[:, 1:2])
    return (h >> 8) & 0xFFFFFF


def uniform(counter: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Uniform[0, 1) float32 values with 24 random bits each.

    counter: int32, broadcastable to the output (e.g. [1, n, 1, batch]).
    keys: int32 [instances, 2, k, 1] from :func:`step_keys`.
    Returns float32 of the broadcast shape, e.g. [instances, n, k, batch].
    """
    return _bits24(counter, keys).to(torch.float32) * (1.0 / 16777216.0)


def uniform48(counter: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Uniform[0, 1) float64 values with 48 random bits each, from the counters 2c and 2c + 1.

    Same shapes as :func:`uniform` (counter c < 2³⁰). For inverse-CDF draws whose probabilities
    must be resolved finer than 2⁻²⁴.
    """
    hi = _bits24(2 * counter, keys).to(torch.float64)
    lo = _bits24(2 * counter + 1, keys).to(torch.float64)
    return hi * (1.0 / 16777216.0) + lo * (1.0 / 16777216.0 ** 2)
