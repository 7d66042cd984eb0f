"""cpool.Sequential: layers run in order, with training (fit), evaluation and saving."""
import contextlib
import signal
import sys
import threading

import numpy as np

from ._validation import as_int
from .layers import Layer, Softmax
from .losses import CrossEntropyLoss

__all__ = ["Sequential"]


class Sequential:
    """A model that applies its layers in order: ``model(x)`` runs them forward,
    ``model.backward(grad)`` runs their backward passes in reverse and returns the gradient
    with respect to the model's input.

    It is list-like: ``len(model)``, ``model[i]``, ``model[a:b]`` (a new Sequential that
    shares the same layer objects), iteration and ``append``. ``Sequential(a, b)`` and
    ``Sequential([a, b])`` are the same model.

    ``parameters()`` returns (param, grad) pairs in a stable order (layer by layer, in each
    layer's ``params`` order). The pairs are the arrays an optimizer keeps: ``backward``
    writes every layer's new gradients into them, so one optimizer built before training
    stays valid across calls.
    """

    def __init__(self, *layers):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        self._layers = []
        self.training = True
        self._fit_loss = None
        for layer in layers:
            self.append(layer)

    # ---------------------------------------------------------------- list-like
    def append(self, layer):
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential holds cpool layers (cpool.layers.Layer subclasses), "
                            f"got {type(layer).__name__}")
        self._layers.append(layer)
        return self

    @property
    def layers(self):
        """The layers, as a new list (append through ``append``)."""
        return list(self._layers)

    def __len__(self):
        return len(self._layers)

    def __iter__(self):
        return iter(self._layers)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Sequential(self._layers[index])
        return self._layers[index]

    def __repr__(self):
        if not self._layers:
            return "Sequential()"
        body = "\n".join(f"  ({i}): {layer!r}" for i, layer in enumerate(self._layers))
        return f"Sequential(\n{body}\n)"

    # ---------------------------------------------------------------- forward / backward
    def forward(self, x):
        for layer in self._layers:
            x = layer(x)
        return x

    def __call__(self, x):
        return self.forward(x)

    def backward(self, grad_output):
        """Backward through every layer in reverse; returns the gradient w.r.t. the input."""
        return self._backward(grad_output, self._layers)

    def _backward(self, grad, layers):
        for layer in reversed(layers):
            grad = layer.backward(grad)
            _sync_grads(layer)
        return grad

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        with self._mode(False):
            for layer in self._layers:
                shape = tuple(layer.output_shape(shape))
        return shape

    # ---------------------------------------------------------------- parameters / modes
    def parameters(self):
        """[(param, grad)] for every trainable array, layer by layer; stable across calls."""
        pairs = []
        for layer in self._layers:
            for name, param in layer.params.items():
                pairs.append((param, _grad_slot(layer, name, param)))
        return pairs

    def zero_grad(self):
        for _, grad in self.parameters():
            grad.fill(0)

    def train(self, mode=True):
        self.training = bool(mode)
        for layer in self._layers:
            layer.train(mode)
        return self

    def eval(self):
        return self.train(False)

    @contextlib.contextmanager
    def _mode(self, training):
        """Temporarily put every layer in train or eval mode; restores each layer's flag."""
        saved = [layer.training for layer in self._layers], self.training
        self.train(training)
        try:
            yield
        finally:
            for layer, flag in zip(self._layers, saved[0]):
                layer.train(flag)
            self.training = saved[1]

    # ---------------------------------------------------------------- inspection
    def summary(self, input_shape, file=None):
        """Print a table of each layer, its output shape and parameter count.

        ``input_shape`` is the shape of one sample, without the batch axis (for example
        ``(1, 28, 28)``); shapes are printed with the batch axis as N. Layers run in eval
        mode on zeros to find the shapes, so no state (BatchNorm statistics, Dropout
        random streams) changes.
        """
        shape = (1,) + tuple(as_int(s, "input_shape", 0) for s in input_shape)
        rows = []
        total = 0
        with self._mode(False):
            for i, layer in enumerate(self._layers):
                shape = tuple(layer.output_shape(shape))
                count = sum(int(p.size) for p in layer.params.values())
                total += count
                rows.append((f"({i}) {layer!r}", _show_shape(shape), f"{count:,}"))
        header = ("Layer", "Output shape", "Params")
        widths = [max(len(r[k]) for r in rows + [header]) for k in range(3)]

        def line(cells):
            return (f"{cells[0]:<{widths[0]}}  {cells[1]:<{widths[1]}}  "
                    f"{cells[2]:>{widths[2]}}")

        rule = "-" * len(line(header))
        buffered = sum(int(b.size) for layer in self._layers for b in _buffers(layer).values())
        text = [line(header), rule] + [line(r) for r in rows] + [
            rule,
            f"Input shape: {_show_shape((1,) + tuple(input_shape))}",
            f"Total params: {total:,}",
            f"Buffers: {buffered:,} (not trained)",
        ]
        print("\n".join(text), file=file)

    # ---------------------------------------------------------------- inference
    def predict(self, x, batch_size=256):
        """``model(x)`` in eval mode, ``batch_size`` samples at a time, concatenated."""
        x = np.asarray(x)
        batch_size = as_int(batch_size, "batch_size", 1)
        if x.ndim == 0 or len(x) == 0:
            raise ValueError(f"x must hold at least one sample, got shape {x.shape}")
        with self._mode(False):
            outs = [self.forward(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
        return np.concatenate(outs)

    def evaluate(self, x, y, loss=None, batch_size=256):
        """Mean loss (and accuracy, for CrossEntropyLoss) over (x, y) in eval mode.

        ``loss`` defaults to the last ``fit``'s loss, else CrossEntropyLoss(). Returns
        ``{"loss": float, "accuracy": float}`` (no "accuracy" for other losses).
        """
        if loss is None:
            loss = self._fit_loss if self._fit_loss is not None else CrossEntropyLoss()
        x, y = _check_xy(x, y)
        batch_size = as_int(batch_size, "batch_size", 1)
        total, correct = 0.0, 0
        with self._mode(False):
            for i in range(0, len(x), batch_size):
                out, _ = self._loss_input(x[i:i + batch_size], loss)
                yb = y[i:i + batch_size]
                total += loss(out, yb) * len(yb)
                correct += _correct(out, yb, loss)
        result = {"loss": total / len(x)}
        if _is_classification(loss):
            result["accuracy"] = correct / _positions(y)
        return result

    # ---------------------------------------------------------------- training
    def fit(self, x, y, epochs=1, batch_size=32, loss=None, optimizer=None,
            validation_data=None, shuffle=True, seed=0, verbose=True):
        """Train with mini-batches and return the history.

        Each epoch visits the samples in an order drawn from ``np.random.default_rng(seed)``
        (or in order when ``shuffle`` is False), in batches of ``batch_size`` (the last one
        may be smaller). A step is: zero the grads, forward, loss, backward, optimizer step.
        ``loss`` defaults to CrossEntropyLoss() and ``optimizer`` to
        Adam(self.parameters()). A last ``Softmax`` layer over the class axis is fused with
        CrossEntropyLoss (see cpool.losses.CrossEntropyLoss).

        The same seed, the same initial weights and the same data give bitwise-identical
        training. With ``verbose`` a tqdm progress bar shows the running loss and accuracy.

        Ctrl-C (SIGINT, in the main thread) stops training at the end of the current batch:
        the model and optimizer stay consistent, the partial epoch's running metrics are
        recorded and ``history["interrupted"]`` is True. A second Ctrl-C aborts at once.

        Returns a dict: "loss" and "accuracy" per epoch (sample-weighted running means over
        the epoch), "val_loss" and "val_accuracy" when ``validation_data=(x_val, y_val)``
        is given (not computed for an interrupted epoch), and "interrupted". "accuracy"
        keys appear only for classification losses (CrossEntropyLoss).
        """
        from .optimizers import Adam

        x, y = _check_xy(x, y)
        epochs = as_int(epochs, "epochs", 0)
        batch_size = as_int(batch_size, "batch_size", 1)
        if seed is not None:
            seed = as_int(seed, "seed", 0)
        if validation_data is not None:
            try:
                x_val, y_val = validation_data
            except (TypeError, ValueError):
                raise TypeError("validation_data must be an (x_val, y_val) pair") from None
            x_val, y_val = _check_xy(x_val, y_val, "x_val", "y_val")
        loss = CrossEntropyLoss() if loss is None else loss
        optimizer = Adam(self.parameters()) if optimizer is None else optimizer
        self._fit_loss = loss
        keys = ["loss"] + (["accuracy"] if _is_classification(loss) else [])
        if validation_data is not None:
            keys += ["val_" + k for k in keys]
        history = {k: [] for k in keys}
        history["interrupted"] = False

        rng = np.random.default_rng(seed)
        n = len(x)
        bar_cls = _tqdm() if verbose else None
        self.train()
        with _StopOnInterrupt() as stop:
            for epoch in range(epochs):
                order = rng.permutation(n) if shuffle else np.arange(n)
                bar = (bar_cls(total=n, desc=f"epoch {epoch + 1}/{epochs}", unit="img",
                               leave=True, file=sys.stderr) if bar_cls else None)
                try:
                    seen, metrics = self._epoch(x, y, order, batch_size, loss, optimizer,
                                                bar, stop)
                    if seen:
                        for k, v in metrics.items():
                            history[k].append(v)
                    if not stop.requested and validation_data is not None:
                        val = self.evaluate(x_val, y_val, loss, max(batch_size, 256))
                        for k, v in val.items():
                            history["val_" + k].append(v)
                        if bar:
                            shown = {**metrics, **{"val_" + k: v for k, v in val.items()}}
                            bar.set_postfix({k: f"{v:.4f}" for k, v in shown.items()})
                finally:
                    if bar:
                        bar.close()
                if stop.requested:
                    history["interrupted"] = True
                    if verbose:
                        print(f"interrupted: stopped after {seen} of {n} samples of epoch "
                              f"{epoch + 1}", file=sys.stderr)
                    break
        return history

    def _epoch(self, x, y, order, batch_size, loss, optimizer, bar, stop):
        """One pass over ``order``; returns (samples seen, running metrics). Stops early,
        after a complete step, when ``stop.requested``."""
        classify = _is_classification(loss)
        seen = positions = correct = 0
        total = 0.0
        metrics = {}
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            value, out = self._train_step(x[idx], y[idx], loss, optimizer)
            seen += len(idx)
            total += value * len(idx)
            metrics["loss"] = total / seen
            if classify:
                correct += _correct(out, y[idx], loss)
                positions += _positions(y[idx])
                metrics["accuracy"] = correct / positions
            if bar:
                bar.set_postfix({k: f"{v:.4f}" for k, v in metrics.items()}, refresh=False)
                bar.update(len(idx))
            if stop.requested:
                break
        return seen, metrics

    def _train_step(self, xb, yb, loss, optimizer):
        self.zero_grad()
        out, used = self._loss_input(xb, loss)
        value = loss(out, yb)
        self._backward(loss.backward(), self._layers[:used])
        optimizer.step()
        return value, out

    def _loss_input(self, x, loss):
        """Forward for the loss: (output fed to the loss, number of layers run).

        With CrossEntropyLoss and a last Softmax over axis 1, that Softmax is skipped and
        the loss gets its input logits (the fused form).
        """
        last = self._layers[-1] if self._layers else None
        if isinstance(last, Softmax) and isinstance(loss, CrossEntropyLoss):
            for layer in self._layers[:-1]:
                x = layer(x)
            x_arr = np.asarray(x)
            if x_arr.ndim >= 2 and int(last.dim) % x_arr.ndim == 1:
                return x, len(self._layers) - 1
            return last(x), len(self._layers)
        return self.forward(x), len(self._layers)

    # ---------------------------------------------------------------- persistence
    def save(self, path):
        """Write weights, buffers and architecture to one .npz file (see cpool.load)."""
        from .serialization import save
        save(self, path)


# -------------------------------------------------------------------- helpers
def _grad_slot(layer, name, param):
    """The grad array bound to (layer, name) for optimizers: created once per layer and
    parameter, re-bound into ``layer.grads`` whenever the layer replaced it."""
    slots = layer.__dict__.setdefault("_grad_slots", {})
    slot = slots.get(name)
    if slot is None or slot.shape != param.shape or slot.dtype != param.dtype:
        current = layer.grads.get(name)
        fits = (isinstance(current, np.ndarray) and current.shape == param.shape
                and current.dtype == param.dtype and current.flags.writeable
                and current.flags.c_contiguous)
        slot = current if fits else np.zeros_like(param)
        slots[name] = slot
    _bind(layer, name, slot)
    return slot


def _bind(layer, name, slot):
    current = layer.grads.get(name)
    if current is not slot:
        if current is not None:
            slot[...] = current
        layer.grads[name] = slot


def _sync_grads(layer):
    """After a layer's backward: copy any replaced grad arrays into the bound slots."""
    for name, slot in layer.__dict__.get("_grad_slots", {}).items():
        _bind(layer, name, slot)


def _buffers(layer):
    return getattr(layer, "buffers", None) or {}


def _show_shape(shape):
    return "(" + ", ".join(["N"] + [str(s) for s in shape[1:]]) + ")"


def _check_xy(x, y, xname="x", yname="y"):
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 0 or y.ndim == 0:
        raise ValueError(f"{xname} and {yname} must be arrays of samples, got shapes "
                         f"{x.shape} and {y.shape}")
    if len(x) != len(y):
        raise ValueError(f"{xname} and {yname} must hold the same number of samples, got "
                         f"{len(x)} and {len(y)}")
    if len(x) == 0:
        raise ValueError(f"{xname} must hold at least one sample")
    return x, y


def _is_classification(loss):
    return isinstance(loss, CrossEntropyLoss)


def _correct(out, y, loss):
    if not _is_classification(loss):
        return 0
    return int(np.count_nonzero(np.argmax(out, axis=1) == y))


def _positions(y):
    return int(np.asarray(y).size)


def _tqdm():
    from tqdm.auto import tqdm
    return tqdm


class _StopOnInterrupt:
    """While active (main thread only), the first SIGINT sets ``requested`` so the loop can
    stop between batches; a second one raises KeyboardInterrupt at once."""

    def __enter__(self):
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if previous is not None:  # None: installed outside Python, cannot restore
                signal.signal(signal.SIGINT, self._handle)
                self._previous = previous
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False
