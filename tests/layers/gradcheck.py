"""Shared float64 finite-difference check of a layer's backward.

Usage::

    from tests.layers.gradcheck import check_layer_gradients

    layer = Conv2d(2, 3, 3, seed=0)
    check_layer_gradients(layer, rng.standard_normal((2, 2, 5, 5)))

What it does:

* Converts the layer to float64 **in place**: every array in ``layer.params`` and every
  floating array in ``layer.buffers`` (if the layer has one) becomes a float64 copy, and
  ``x`` becomes a float64 copy. Layers must read ``params`` on every call (cpool's do).
* Uses the scalar loss L = sum(r * f(x)) with a fixed random r of the output's shape, so
  ``layer.backward(r)`` is dL/dx and ``layer.grads[name]`` is dL/dparam.
* Compares those with central differences (L(v + eps) - L(v - eps)) / (2*eps) for
  every element of x and of every param (or, with ``max_elements``, a fixed random
  subset of that many elements of each array), and checks that ``grads`` has exactly the
  keys of ``params`` with matching shapes and that backward left r unchanged.

Options:

* ``before_forward(layer)``: called before every forward, e.g. to reseed a Dropout so
  each evaluation draws the same mask.
* ``select_output(out)``: picks the differentiable array when forward returns several
  (e.g. ``lambda out: out[0]`` for max pooling with return_indices=True).
* ``check_input=False`` skips the input gradient; ``params=[names]`` limits the params.

Inputs should keep clear of kinks (ReLU at 0, max-pooling ties) by more than eps.
Returns {"x": max abs error, name: max abs error, ...}; raises AssertionError on a
mismatch, naming the array and the worst element.
"""
import numpy as np


def to_float64(layer):
    """Replace the layer's params and floating buffers by float64 copies."""
    for name, value in list(layer.params.items()):
        layer.params[name] = np.array(value, dtype=np.float64)
    buffers = getattr(layer, "buffers", None) or {}
    for name, value in list(buffers.items()):
        if np.asarray(value).dtype.kind == "f":
            buffers[name] = np.array(value, dtype=np.float64)
    return layer


def _indices(shape, max_elements, rng):
    size = int(np.prod(shape))
    flat = np.arange(size)
    if max_elements is not None and size > max_elements:
        flat = np.sort(rng.choice(size, max_elements, replace=False))
    return [np.unravel_index(i, shape) for i in flat]


def check_layer_gradients(layer, x, *, eps=1e-6, rtol=1e-5, atol=1e-7, seed=0,
                          max_elements=None, check_input=True, params=None,
                          before_forward=None, select_output=None):
    rng = np.random.default_rng(seed)
    to_float64(layer)
    x = np.array(x, dtype=np.float64)

    def run(xv):
        if before_forward is not None:
            before_forward(layer)
        out = layer(xv)
        out = select_output(out) if select_output is not None else out
        return np.asarray(out, dtype=np.float64)

    y = run(x)
    r = rng.standard_normal(y.shape)
    r_copy = r.copy()
    grad_x = np.asarray(layer.backward(r))
    assert np.array_equal(r, r_copy), "backward modified grad_output"
    assert set(layer.grads) == set(layer.params), (
        f"grads has keys {sorted(layer.grads)}, params has {sorted(layer.params)}")
    grads = {name: np.array(g) for name, g in layer.grads.items()}
    for name, g in grads.items():
        assert g.shape == layer.params[name].shape, (
            f"grads[{name!r}] has shape {g.shape}, params[{name!r}] {layer.params[name].shape}")

    def loss(xv):
        return float(np.sum(r * run(xv)))

    def numeric(array, evaluate):
        """Central differences of evaluate() over the chosen elements of `array`."""
        out = np.full(array.shape, np.nan)
        for idx in _indices(array.shape, max_elements, rng):
            orig = array[idx]
            array[idx] = orig + eps
            plus = evaluate()
            array[idx] = orig - eps
            minus = evaluate()
            array[idx] = orig
            out[idx] = (plus - minus) / (2 * eps)
        return out

    errors = {}

    def compare(label, analytic, approx):
        assert analytic.shape == approx.shape, (
            f"{label}: gradient shape {analytic.shape}, expected {approx.shape}")
        mask = ~np.isnan(approx)
        err = np.abs(analytic[mask] - approx[mask])
        errors[label] = float(err.max()) if err.size else 0.0
        bad = err > atol + rtol * np.abs(approx[mask])
        if bad.any():
            worst = int(np.argmax(err - rtol * np.abs(approx[mask])))
            where = np.argwhere(mask)[worst]
            raise AssertionError(
                f"{type(layer).__name__}: gradient of {label} differs from finite differences "
                f"at {tuple(where)}: analytic {analytic[mask][worst]!r}, numeric "
                f"{approx[mask][worst]!r} ({int(bad.sum())} of {bad.size} elements off)")

    if check_input:
        xw = x.copy()
        approx = numeric(xw, lambda: loss(xw))
        compare("x", grad_x.astype(np.float64), approx)
    names = list(layer.params) if params is None else list(params)
    for name in names:
        p = layer.params[name]
        approx = numeric(p, lambda: loss(x))
        compare(name, grads[name], approx)
    return errors
