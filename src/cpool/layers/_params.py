"""Parameter helpers shared by the trainable layers: PyTorch's default init and grad
storage."""
import numpy as np


def kaiming_uniform(rng, shape, fan_in):
    """PyTorch's default init of Conv and Linear weights and biases, as float32.

    torch uses kaiming_uniform_(a=sqrt(5)) for the weight, whose bound
    gain*sqrt(3/fan_in) with gain = sqrt(2/(1 + a**2)) is exactly 1/sqrt(fan_in), and
    uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the bias.
    """
    bound = 1.0 / np.sqrt(fan_in) if fan_in > 0 else 0.0
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


def store_grad(layer, name, value):
    """Set layer.grads[name] to `value` (overwriting, not accumulating).

    Written into the existing array when it matches the param's shape and dtype, so
    references an optimizer holds stay valid; otherwise a new array in the param's dtype.
    """
    param = layer.params[name]
    current = layer.grads.get(name)
    if (isinstance(current, np.ndarray) and current.shape == param.shape
            and current.dtype == param.dtype and current.flags.writeable):
        current[...] = np.reshape(value, param.shape)
    else:
        layer.grads[name] = np.array(np.reshape(value, param.shape), dtype=param.dtype)
