"""Which opset and IR version an exported model gets: the one table of versions.

Four facts decide it:

* the IR version an opset needs (``OPSET_IR``): the IR of the onnx release that
  introduced that opset (onnx.helper.VERSION_TABLE). Writing the *lowest* IR that can
  carry the opset keeps a model loadable by the oldest runtime able to run it; onnx 1.23
  writes IR 14 by default, which onnxruntime <= 1.31 refuses ("Unsupported model IR
  version"), so cpool always sets ``ir_version`` itself;
* what the installed onnxruntime accepts (``ORT_LIMITS``): there is no API to ask it,
  hence the table. An onnxruntime newer than the last row gets the last row; one between
  rows gets the row below it (never more than a known release accepted);
* what cpool has tested (``TESTED_OPSETS``): tests/onnx exercises every one of them;
* which operator versions onnxruntime lacks kernels for (``ORT_OP_LIMITS``).

The default opset is the highest one that the installed onnx defines, the installed
onnxruntime accepts (both the opset and its IR version) and cpool has tested; export
lowers it for a model that needs an operator listed in ORT_OP_LIMITS.
"""
import re

MIN_OPSET = 13

# opset -> lowest IR version that carries it (onnx.helper.VERSION_TABLE).
OPSET_IR = {
    13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9, 21: 10, 22: 10,
    23: 11, 24: 12, 25: 13, 26: 13, 27: 13, 28: 14,
}

# onnxruntime (major, minor) -> (max IR version, max opset) it loads.
# Rows up to 1.23: the opset of the onnx release each onnxruntime integrated (its version
# matrix, docs/Versioning.md) and that opset's IR; not re-measured here. 1.31 refuses
# IR > 13 (so at most opset 27). 1.32 was measured here: it loads IR 14 and opset 28 and
# refuses opset 29.
ORT_LIMITS = {
    (1, 16): (9, 19),
    (1, 17): (9, 20),
    (1, 18): (10, 21),
    (1, 21): (10, 22),
    (1, 23): (11, 23),
    (1, 31): (13, 27),
    (1, 32): (14, 28),
}

# Operators whose newest versions onnxruntime has no CPU kernel for: op -> the highest
# opset at which the version it resolves to runs. Measured with onnxruntime 1.32 (which
# loads opset 28): MaxRoiPool-22, RoiAlign-22 and GlobalLpPool-22 are missing, their
# opset-21 versions run. No earlier release is known to have added them, so the limits
# apply to every onnxruntime here. A model using such an operator gets, by default, the
# highest opset at which all its operators run; asked for a higher one, export raises.
ORT_OP_LIMITS = {"MaxRoiPool": 21, "RoiAlign": 21, "GlobalLpPool": 21}

TESTED_OPSETS = tuple(range(MIN_OPSET, 29))


def _major_minor(version):
    m = re.match(r"(\d+)\.(\d+)", version)
    if not m:
        raise ValueError(f"cannot read a version number from {version!r}")
    return int(m.group(1)), int(m.group(2))


def ort_limits(ort_version=None):
    """(max IR, max opset) that onnxruntime `ort_version` (default: the installed one) loads."""
    if ort_version is None:
        import onnxruntime
        ort_version = onnxruntime.__version__
    key = _major_minor(ort_version)
    known = [row for row in sorted(ORT_LIMITS) if row <= key]
    if not known:
        oldest = ".".join(map(str, min(ORT_LIMITS)))
        raise RuntimeError(f"onnxruntime {ort_version} is older than {oldest}, the oldest "
                           f"cpool.onnx knows; upgrade onnxruntime")
    return ORT_LIMITS[known[-1]]


def onnx_limits():
    """(max IR, max opset) that the installed onnx package writes and checks."""
    import onnx
    import onnx.defs
    return onnx.IR_VERSION, onnx.defs.onnx_opset_version()


def supported_opsets(ort_version=None):
    """Opsets an export may use here, lowest first."""
    ort_ir, ort_opset = ort_limits(ort_version)
    onnx_ir, onnx_opset = onnx_limits()
    return tuple(o for o in TESTED_OPSETS
                 if o <= min(ort_opset, onnx_opset) and OPSET_IR[o] <= min(ort_ir, onnx_ir))


def default_opset(ort_version=None):
    """The highest opset that onnx, onnxruntime and cpool's tests all cover."""
    opsets = supported_opsets(ort_version)
    if not opsets:
        raise RuntimeError("the installed onnx/onnxruntime support no opset that cpool.onnx "
                           f"has tested ({TESTED_OPSETS[0]}..{TESTED_OPSETS[-1]})")
    return opsets[-1]


def runnable_opset(op_types, opset):
    """The highest opset <= `opset` at which onnxruntime has kernels for all `op_types`."""
    return min([opset] + [ORT_OP_LIMITS[op] for op in op_types if op in ORT_OP_LIMITS])


def resolve_opset(opset=None):
    """Validate a requested opset (None: the default) -> (opset, ir_version)."""
    if opset is None:
        opset = default_opset()
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise TypeError(f"opset must be an int or None, got {type(opset).__name__}")
    opsets = supported_opsets()
    if opset not in opsets:
        raise ValueError(f"opset must be one of {opsets[0]}..{opsets[-1]} here (supported by "
                         f"the installed onnx and onnxruntime and tested by cpool), got {opset}")
    return opset, OPSET_IR[opset]
