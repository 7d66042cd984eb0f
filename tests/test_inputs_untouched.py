"""No operator ever writes to its inputs, whatever their memory layout, and read-only
inputs are accepted.

Every array argument of every operator in cpool.functional.__all__ is passed, one at a
time and then all at once, as: a read-only array; a Fortran-ordered copy; a strided view
(every other element of a larger buffer); a reversed view (negative strides); and an
offset view into a buffer with guard elements around it. Each buffer -- view, gaps and
guards included -- must be bitwise unchanged after the call, and the result must be
bitwise equal to that of plain C-contiguous inputs (so the gaps and guards, which hold
other values, are never read either).
"""
import numpy as np
import pytest

from cpool import functional as F
from tests.operator_calls import arrays_of, operator_calls, results_of


def _guard_value(a):
    return np.array(7 if a.dtype.kind in "iu" else np.nan, dtype=a.dtype)


def readonly(a):
    b = a.copy()
    b.flags.writeable = False
    return b, b


def fortran(a):
    b = np.asfortranarray(a)
    return b, b


def strided(a):
    """Every other element along the last axis of a buffer twice as wide."""
    buf = np.empty(a.shape[:-1] + (2 * a.shape[-1],) if a.ndim else (2,), dtype=a.dtype)
    buf[...] = _guard_value(a)
    view = buf[..., ::2] if a.ndim else buf[0:1].reshape(())
    view[...] = a
    return view, buf


def reversed_view(a):
    """Negative strides along every axis."""
    buf = np.ascontiguousarray(a[(slice(None, None, -1),) * a.ndim])
    return buf[(slice(None, None, -1),) * a.ndim], buf


def offset_view(a):
    """A C-contiguous view that starts one element into a buffer with guards around it."""
    buf = np.empty(a.size + 2, dtype=a.dtype)
    buf[...] = _guard_value(a)
    view = buf[1:-1].reshape(a.shape)
    view[...] = a
    return view, buf


LAYOUTS = {"readonly": readonly, "fortran": fortran, "strided": strided,
           "reversed": reversed_view, "offset": offset_view}


def _replace(args, kwargs, where, index, new):
    """args/kwargs with the index-th array at position `where` replaced by `new`."""
    args, kwargs = list(args), dict(kwargs)
    container = args if isinstance(where, int) else kwargs
    value = container[where]
    if isinstance(value, list):
        arrays = [i for i, v in enumerate(value) if isinstance(v, np.ndarray)]
        value = list(value)
        value[arrays[index]] = new
        container[where] = value
    else:
        container[where] = new
    return args, kwargs


def _slots(args, kwargs):
    """(where, index within a list at `where`, array) of every array argument."""
    slots, seen = [], {}
    for where, a in arrays_of(args, kwargs):
        slots.append((where, seen.get(where, 0), a))
        seen[where] = seen.get(where, 0) + 1
    return slots


def raw(buf):
    """The bytes of a whole (C- or Fortran-contiguous) buffer, in memory order."""
    return buf.tobytes(order="A")


def _assert_same_results(got, want, name):
    got, want = results_of(got), results_of(want)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        assert raw(np.ascontiguousarray(g)) == raw(w), f"{name}: different result"


CALLS = operator_calls("small", np.float64, seed=3)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("name", F.__all__)
def test_inputs_never_modified(name, layout):
    args, kwargs = CALLS[name]
    f = getattr(F, name)
    want = f(*args, **kwargs)
    slots = _slots(args, kwargs)
    made = []
    for where, index, a in slots:  # one argument at a time
        view, buf = LAYOUTS[layout](a)
        before = raw(buf)
        new_args, new_kwargs = _replace(args, kwargs, where, index, view)
        _assert_same_results(f(*new_args, **new_kwargs), want, f"{name}, {layout} {where}")
        assert raw(buf) == before, f"{name} wrote to its {layout} argument {where}"
        made.append((where, index, view, buf, before))
    new_args, new_kwargs = args, kwargs  # all of them at once
    for where, index, view, _, _ in made:
        new_args, new_kwargs = _replace(new_args, new_kwargs, where, index, view)
    _assert_same_results(f(*new_args, **new_kwargs), want, f"{name}, all {layout}")
    for where, _, _, buf, before in made:
        assert raw(buf) == before, f"{name} wrote to its {layout} argument {where}"


@pytest.mark.parametrize("name", F.__all__)
def test_results_are_fresh_writable_arrays(name):
    """Results never alias an input (writing to one leaves the inputs alone)."""
    args, kwargs = CALLS[name]
    inputs = [a for _, a in arrays_of(args, kwargs)]
    before = [a.copy() for a in inputs]
    for r in results_of(getattr(F, name)(*args, **kwargs)):
        assert r.flags.writeable and r.flags.c_contiguous
        assert not any(np.shares_memory(r, a) for a in inputs)
        r[...] = 0
    for a, b in zip(inputs, before):
        np.testing.assert_array_equal(a, b)


def test_layouts_are_what_they_claim():
    a = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    assert not readonly(a)[0].flags.writeable
    assert fortran(a)[0].flags.f_contiguous and not fortran(a)[0].flags.c_contiguous
    for make in (strided, reversed_view, offset_view):
        view, buf = make(a)
        np.testing.assert_array_equal(view, a)
        assert view.base is buf or view.base is buf.base or np.shares_memory(view, buf)
    assert not strided(a)[0].flags.c_contiguous and not reversed_view(a)[0].flags.c_contiguous
    assert offset_view(a)[0].flags.c_contiguous and offset_view(a)[0].ctypes.data != \
        offset_view(a)[1].ctypes.data
