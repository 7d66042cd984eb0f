"""Argument checks shared by every operator. Each raises before any kernel runs and names
the argument and what it accepts."""
import operator

import numpy as np

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# Integer dtypes that max pooling computes natively (key) in the dtype it runs (value):
# unsigned 16 and 32 bits run exactly in the next wider signed type.
_NATIVE_INTS = {np.dtype(t): np.dtype(t) for t in (np.uint8, np.int8, np.int16, np.int32,
                                                   np.int64)}
_NATIVE_INTS.update({np.dtype(np.uint16): np.dtype(np.int32),
                     np.dtype(np.uint32): np.dtype(np.int64)})


def compute_dtype(dtype, name="x"):
    """The dtype a kernel computes in for input `dtype`.

    float32 and float64 are kept; float16 computes in float32; integers compute in float64.
    bool, complex, object, string and other dtypes raise TypeError.
    """
    dtype = np.dtype(dtype)
    if dtype in _FLOAT_DTYPES:
        return dtype
    if dtype == np.float16:
        return np.dtype(np.float32)
    if dtype.kind in "iu":
        return np.dtype(np.float64)
    raise TypeError(
        f"{name} must hold real numbers (float32, float64, float16 or integers), got dtype {dtype}"
    )


def as_float_array(x, name="x", integers=False):
    """Return (C-contiguous float32/float64 array, dtype of the result to hand back).

    Never writes to `x`; a copy is made only when the dtype or layout requires one.
    Floating inputs keep their dtype in the result; integer inputs give float64, unless
    `integers` (max pooling): then integers other than uint64 are computed exactly and
    keep their dtype.
    """
    if isinstance(x, np.ndarray):
        arr = x
    else:
        try:
            arr = np.asarray(x)
        except (ValueError, TypeError) as exc:
            raise TypeError(f"{name} must be an array of real numbers: {exc}") from None
    if integers and arr.dtype in _NATIVE_INTS:
        return np.ascontiguousarray(arr, dtype=_NATIVE_INTS[arr.dtype]), arr.dtype
    dtype = compute_dtype(arr.dtype, name)
    result_dtype = arr.dtype if arr.dtype.kind == "f" else dtype
    return np.ascontiguousarray(arr, dtype=dtype), result_dtype


def as_int(value, name, minimum=None):
    """An exact Python int from an int-like (not bool, not float)."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def int_tuple(value, n, name, minimum=1):
    """An int or a sequence of `n` ints -> tuple of `n` ints, each >= minimum."""
    if isinstance(value, (list, tuple, np.ndarray)):
        items = list(value)
        if len(items) != n:
            raise ValueError(f"{name} must be an int or a sequence of {n} ints, got {value!r}")
    else:
        items = [value] * n
    return tuple(as_int(v, name, minimum) for v in items)


def check_bool(value, name):
    """A bool (or NumPy bool); anything else, e.g. the string "no", is a TypeError."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_choice(value, name, choices):
    if not isinstance(value, str) or value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {allowed}; got {value!r}")
    return value


def check_positive_float(value, name):
    """A finite float > 0 (used for norm_type)."""
    if isinstance(value, (bool, np.bool_, str, bytes)):  # float("2") would accept a string
        raise TypeError(f"{name} must be a positive number, got {type(value).__name__}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a positive number, got {type(value).__name__}") from None
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def spatial_input(x, nd, name="x", what="pooling", integers=False):
    """Validate a pooling (or other `what`) input of `nd` spatial dims.

    Accepts batched (N, C, *spatial) or unbatched (C, *spatial) input (channels-last:
    (N, *spatial, C) or (*spatial, C)) and returns (the array with a batch axis, batched
    flag, dtype to hand back). `integers`: as in as_float_array.
    """
    arr, result_dtype = as_float_array(x, name, integers)
    if arr.ndim == nd + 2:
        return arr, True, result_dtype
    if arr.ndim == nd + 1:
        return arr[np.newaxis], False, result_dtype
    raise ValueError(
        f"{name} must have {nd + 1} dims (C, *spatial) or {nd + 2} dims (N, C, *spatial) "
        f"(channels-last: (*spatial, C) or (N, *spatial, C)) "
        f"for {nd}-D {what}, got shape {arr.shape}"
    )


def finish_output(out, batched, result_dtype):
    """Undo spatial_input: drop the added batch axis and cast back (float16 inputs)."""
    if not batched:
        out = out[0]
    if out.dtype != result_dtype:
        out = out.astype(result_dtype)
    return out


def int_array(value, name, shape=None):
    """An array-like of integers -> C-contiguous int64 ndarray, optionally of `shape`.

    bool, float and other dtypes raise TypeError (an empty list is accepted as empty).
    """
    arr = np.asarray(value)
    if arr.size == 0 and arr.dtype.kind == "f":
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an array of integers, got dtype {arr.dtype}")
    if shape is not None and arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {arr.shape}")
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} holds a value too large for int64: {arr.max()}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def grad_array(grad_output, shape, dtype, name="grad_output"):
    """grad_output checked to have `shape`, as a C-contiguous array of compute `dtype`."""
    g = np.asarray(grad_output)
    if g.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (the last forward's output), "
                         f"got {g.shape}")
    compute_dtype(g.dtype, name)
    return np.ascontiguousarray(g, dtype=dtype)
