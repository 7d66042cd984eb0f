"""float16 storage: float16 arrays stay float16, and are pooled in float32 in batch chunks.

The kernels compute float16 input in float32 (as PyTorch's CPU kernels do): values are
widened, reduced and divided in float32, and each result is rounded to float16 once.
A public function given float16 arrays runs on chunks of the batch, each converted to
float32 on its own, so that a call holds a float32 working set of about CHUNK_BYTES
instead of a float32 copy of the whole input; its results are float16 (indices int64).
Every batch element is pooled independently, so chunking changes no value.
"""
import functools
import inspect

import numpy as np

# float32 bytes of input per chunk: large enough that the per-call overhead vanishes,
# small enough to stay in the last-level cache.
CHUNK_BYTES = 4 << 20


def in_float32_chunks(arrays, shapes=(), batched_ndim=None):
    """Decorate a pooling function so that float16 input runs in float32 batch chunks.

    arrays : names of the array arguments that share the batch axis 0; the first one
        decides whether the call is batched.
    shapes : names of shape arguments (input_shape) whose first entry is the batch size.
    batched_ndim : ndim of the first array when batched (None: always batched), or a
        function of the bound arguments giving it.

    A call without float16 arrays, unbatched, or with a batch that fits one chunk runs
    as it is (the function converts its input itself).
    """
    def decorate(function):
        signature = inspect.signature(function)

        @functools.wraps(function)
        def run(*args, **kwargs):
            # no float16 array among the arguments: nothing to chunk, and no binding cost
            if not (any(map(_is_float16, args)) or any(map(_is_float16, kwargs.values()))):
                return function(*args, **kwargs)
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError:
                return function(*args, **kwargs)  # let the function report it
            given = {name: bound.arguments[name] for name in arrays
                     if bound.arguments.get(name) is not None}
            lead = given.get(arrays[0])
            if (not isinstance(lead, np.ndarray) or lead.ndim == 0
                    or not any(_is_float16(a) for a in given.values())
                    or lead.ndim != _ndim(batched_ndim, bound.arguments, lead.ndim)):
                return function(*args, **kwargs)
            n = lead.shape[0]
            per_sample = max(lead[:1].size * 4, 1)
            step = max(1, CHUNK_BYTES // per_sample)
            if n <= step or any(np.shape(a)[:1] != (n,) for a in given.values()):
                return function(*args, **kwargs)  # mismatched batches: the function says so
            results = None
            for start in range(0, n, step):
                part = dict(bound.arguments)
                for name, value in given.items():
                    part[name] = value[start:start + step]
                for name in shapes:
                    shape = part.get(name)
                    if isinstance(shape, (tuple, list)) and len(shape):
                        part[name] = (len(range(start, min(n, start + step))),) + tuple(shape[1:])
                out = function(**part)
                outs = out if isinstance(out, tuple) else (out,)
                if results is None:
                    results = tuple(np.empty((n,) + o.shape[1:], dtype=o.dtype) for o in outs)
                for whole, o in zip(results, outs):
                    whole[start:start + step] = o
            return results if isinstance(out, tuple) else results[0]

        return run

    return decorate


def _ndim(batched_ndim, arguments, default):
    if batched_ndim is None:
        return default
    if callable(batched_ndim):
        try:
            return batched_ndim(arguments)
        except (TypeError, KeyError):
            return None  # bad arguments: the function reports them
    return batched_ndim


def _is_float16(value):
    return isinstance(value, np.ndarray) and value.dtype == np.float16
