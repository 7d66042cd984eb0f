"""``cpool demo``: train a small CNN on the bundled handwritten digits (or on MNIST), save it,
plot its training curve, export it to ONNX and check onnxruntime agrees.

The model builders (``digits_cnn``, ``mnist_cnn``) are public so benchmarks and tests use
the same networks.
"""
import argparse
import os
import sys
import time

import numpy as np

DIGITS_EPOCHS = 20
MNIST_EPOCHS = 1
QUICK_TRAIN, QUICK_TEST, QUICK_EPOCHS = 512, 256, 3  # --quick: a smoke test, seconds


def _seeds(seed, count):
    """Per-layer init seeds: distinct for every layer and demo seed (count < 100), and short
    in the printed model. default_rng hashes each, so the streams are independent."""
    return [seed * 100 + i for i in range(count)]


def digits_cnn(seed=0):
    """The seed documents' pattern for 8x8 digits:
    Conv(1->16, 3x3, same) -> ReLU -> MaxPool 2 -> Conv(16->32, 3x3, same) -> ReLU ->
    MaxPool 2 -> Flatten -> Linear(128 -> 10) -> Softmax."""
    from .layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Softmax
    from .sequential import Sequential

    s = _seeds(seed, 3)
    return Sequential(
        Conv2d(1, 16, 3, padding=1, seed=s[0]), ReLU(), MaxPool2d(2),
        Conv2d(16, 32, 3, padding=1, seed=s[1]), ReLU(), MaxPool2d(2),
        Flatten(), Linear(32 * 2 * 2, 10, seed=s[2]), Softmax(dim=1))


def mnist_cnn(seed=0):
    """The seed's 28x28 MNIST network: Conv(1->32, 3x3) -> ReLU -> MaxPool 2 ->
    Conv(32->64, 3x3) -> ReLU -> MaxPool 2 -> Conv(64->64, 3x3) -> ReLU -> Flatten ->
    Linear(576 -> 10), giving logits (train it with CrossEntropyLoss)."""
    from .layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU
    from .sequential import Sequential

    s = _seeds(seed, 4)
    return Sequential(
        Conv2d(1, 32, 3, seed=s[0]), ReLU(), MaxPool2d(2),
        Conv2d(32, 64, 3, seed=s[1]), ReLU(), MaxPool2d(2),
        Conv2d(64, 64, 3, seed=s[2]), ReLU(),
        Flatten(), Linear(64 * 3 * 3, 10, seed=s[3]))


# ---------------------------------------------------------------------------- command line
class _DataAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        if values == ["digits"] or (len(values) == 2 and values[0] == "mnist"):
            setattr(namespace, self.dest, values)
        else:
            raise argparse.ArgumentError(self, f"expected 'digits' or 'mnist DIR', got "
                                               f"{' '.join(values)!r}")


def register(subparsers):
    """Add the ``demo`` command to the ``cpool`` parser."""
    p = subparsers.add_parser(
        "demo", help="train a CNN on the bundled handwritten digits, save and export it",
        description="Train the seed CNN (Conv-ReLU-MaxPool x2, Flatten, Linear, Softmax) on "
                    "the bundled UCI handwritten digits with a stratified 80/20 split, save "
                    "it, plot its training curve (with matplotlib) and export it to ONNX, "
                    "checking onnxruntime. The last line printed is 'test accuracy: X'.")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"training epochs (default {DIGITS_EPOCHS} for digits, "
                        f"{MNIST_EPOCHS} for mnist)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, split and "
                   "batch order (default 0)")
    p.add_argument("--out", default="cpool-demo", metavar="DIR",
                   help="folder for the model, plot and ONNX file (default ./cpool-demo)")
    p.add_argument("--data", nargs="+", default=["digits"], action=_DataAction,
                   metavar="NAME [DIR]",
                   help="'digits' (bundled, the default) or 'mnist DIR' with the four "
                        "standard IDX files")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="kernel threads (default: 1 for the digits, whose 8x8 batches are "
                        "too small to share out; all cores for mnist)")
    p.add_argument("--quick", action="store_true",
                   help="a tiny run on a subset (for tests; accuracy is not meaningful)")
    p.set_defaults(run=run)


def run(args):
    from .datasets import load_digits, load_mnist, stratified_split

    if args.epochs is not None and args.epochs < 1:
        sys.exit("cpool demo: --epochs must be >= 1")
    if args.seed < 0:
        sys.exit("cpool demo: --seed must be >= 0")
    if args.threads is not None and args.threads < 1:
        sys.exit("cpool demo: --threads must be >= 1")
    from . import set_num_threads

    set_num_threads(args.threads or (1 if args.data[0] == "digits" else None))
    if args.data[0] == "digits":
        print("cpool demo: a CNN on the UCI handwritten digits (1,797 8x8 images, CC BY 4.0; "
              "Alpaydin & Kaynak)")
        images, labels = load_digits()
        train, test = stratified_split(labels, 0.2, seed=args.seed)
        data = (images[train], labels[train]), (images[test], labels[test])
        model, name, epochs = digits_cnn(args.seed), "digits_cnn", DIGITS_EPOCHS
        lr, batch_size = 3e-3, 32
    else:
        print(f"cpool demo: the seed's 28x28 CNN on MNIST from {args.data[1]}")
        try:
            data = load_mnist(args.data[1])
        except (OSError, ValueError) as exc:
            sys.exit(f"cpool demo: {exc}")
        if data[0][0].shape[1:] != (1, 28, 28):
            sys.exit(f"cpool demo: expected 28x28 images, got {data[0][0].shape[2:]}")
        model, name, epochs = mnist_cnn(args.seed), "mnist_cnn", MNIST_EPOCHS
        lr, batch_size = 1e-3, 64
    (x_train, y_train), (x_test, y_test) = data
    if args.quick:
        x_train, y_train = x_train[:QUICK_TRAIN], y_train[:QUICK_TRAIN]
        x_test, y_test = x_test[:QUICK_TEST], y_test[:QUICK_TEST]
        epochs = QUICK_EPOCHS
    epochs = args.epochs or epochs
    return train_and_report(model, name, (x_train, y_train), (x_test, y_test), epochs,
                            batch_size, lr, args.seed, args.out)


def train_and_report(model, name, train, test, epochs, batch_size, lr, seed, out):
    from .losses import CrossEntropyLoss
    from .optimizers import Adam

    (x_train, y_train), (x_test, y_test) = train, test
    print(f"{len(x_train)} training and {len(x_test)} test images, {epochs} epochs")
    model.summary(x_train.shape[1:])
    loss = CrossEntropyLoss()
    start = time.perf_counter()
    history = model.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, loss=loss,
                        optimizer=Adam(model.parameters(), lr=lr),
                        validation_data=(x_test, y_test), seed=seed)
    seconds = time.perf_counter() - start
    speed = (" (interrupted)" if history["interrupted"] else
             f" ({len(x_train) * epochs / seconds:,.0f} images/s)")
    print(f"trained in {seconds:.1f} s{speed}")
    accuracy = model.evaluate(x_test, y_test, loss)["accuracy"]

    os.makedirs(out, exist_ok=True)
    _save_and_reload(model, os.path.join(out, f"{name}.npz"), x_test)
    plot = _plot(history, os.path.join(out, "training_curve.png"))
    print(f"training curve: {plot}" if plot else
          "training curve: skipped (pip install matplotlib to get one)")
    _export_onnx(model, os.path.join(out, f"{name}.onnx"), x_test)
    print(f"test accuracy: {accuracy:.3f}")
    return 0


def _save_and_reload(model, path, x):
    from .serialization import load

    model.save(path)
    same = np.array_equal(load(path).predict(x), model.predict(x))
    print(f"saved model: {path} (reloaded with cpool.load: "
          f"{'identical predictions' if same else 'PREDICTIONS DIFFER'})")


def _plot(history, path):
    """A loss and accuracy per epoch figure; None when matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return None
    epochs = np.arange(1, len(history["loss"]) + 1)
    fig = Figure(figsize=(9, 3.5))
    for ax, key in zip(fig.subplots(1, 2), ("loss", "accuracy")):
        ax.plot(epochs, history[key], marker="o", label="train (running)")
        val = history.get("val_" + key, [])
        if val:
            ax.plot(epochs[:len(val)], val, marker="o", label="test")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _export_onnx(model, path, x):
    try:
        from .onnx import export, verify
    except ImportError as exc:
        print(f"onnx export: skipped ({exc})")
        return
    export(model, x[:1], path=path)
    report = verify(model, path, inputs=x)
    print(f"onnx: {path}; onnxruntime vs cpool on the {len(x)} test images: max abs "
          f"difference {max(report.values()):.2e}")
