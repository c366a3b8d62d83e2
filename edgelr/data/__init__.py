"""Data loading for ``--data``: arrays split into train / validation / test, checked against a model.

Accepted specs:

* ``digits``: scikit-learn's bundled 8x8 digits (1,797 images), shape (N, 8, 8, 1), float32 in [0, 1].
* ``fashion-mnist``: Debian's ``dataset-fashion-mnist`` files (60k/10k), shape (N, 28, 28, 1), float32 in [0, 1].
* ``path/to/file.npz`` with ``x_train, y_train, x_test, y_test`` (optionally ``x_val, y_val``), or ``x, y``
  (split here: 20 % test, then 10 % of the rest for validation, seeded).
* ``module:function`` (a Python module path or an importable name) returning ``(train, validation)``
  ``tf.data`` datasets of ``(x, y)`` pairs (batched or not); validation doubles as the test split.

When no validation split is given, 10 % of the training data is held out (seeded, stratified order is not
needed for the sizes we use). Labels are integer class ids; one-hot labels are converted.
"""

from __future__ import annotations

import gzip
import importlib
import importlib.util
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgelr.errors import DataError

BUILTIN = ("digits", "fashion-mnist")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


@dataclass(frozen=True)
class Dataset:
    """Arrays of one data set. ``x_*`` have shape (N, *input_shape); ``y_*`` are int64 class ids (N,)
    or, for regression/other targets, float arrays of shape (N, *output_shape)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int | None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.x_train), "val": len(self.x_val), "test": len(self.x_test)}

    def subset(self, train: int | None = None, val: int | None = None, test: int | None = None) -> "Dataset":
        """The first ``train``/``val``/``test`` examples of each split (None keeps a split whole)."""
        return replace(self, x_train=self.x_train[:train], y_train=self.y_train[:train],
                       x_val=self.x_val[:val], y_val=self.y_val[:val],
                       x_test=self.x_test[:test], y_test=self.y_test[:test])


def load_data(spec: str, model: Any = None, *, val_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """Load the data named by ``spec`` (see module doc); with ``model``, check that it fits the model.

    Raises
    ------
    DataError
        Unknown name, missing files, malformed arrays, or data that does not fit ``model``.
    """
    spec = str(spec)
    if spec == "digits":
        data = _digits(val_fraction, seed)
    elif spec in ("fashion-mnist", "fashion_mnist", "fmnist"):
        data = _fashion_mnist(val_fraction, seed)
    elif spec.endswith(".npz") or Path(spec).is_file():
        data = _npz(Path(spec), val_fraction, seed)
    elif ":" in spec:
        data = _from_function(spec)
    else:
        raise DataError(f"--data {spec!r} is neither a built-in data set ({', '.join(BUILTIN)}), an existing "
                        f".npz file, nor module:function; pass one of those")
    if model is not None:
        data = fit_to_model(data, model)
    return data


def _split_val(x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_val = max(1, int(round(len(x) * val_fraction)))
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]


def _digits(val_fraction: float, seed: int) -> Dataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - sklearn is a dependency
        raise DataError("the 'digits' data set needs scikit-learn; run: pip install scikit-learn") from None
    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[..., None]
    y = bunch.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    n_test = int(round(len(x) * 0.2))
    x_test, y_test, x, y = x[:n_test], y[:n_test], x[n_test:], y[n_test:]
    x_tr, y_tr, x_val, y_val = _split_val(x, y, val_fraction, seed)
    return Dataset("digits", x_tr, y_tr, x_val, y_val, x_test, y_test, 10)


def _read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    return np.frombuffer(raw, dtype=np.uint8, offset=offset)


def _fashion_mnist(val_fraction: float, seed: int) -> Dataset:
    files = {k: FASHION_DIR / f"{k}.gz" for k in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                                   "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise DataError(f"Fashion-MNIST files not found ({missing[0]}); install them with: "
                        f"apt-get install dataset-fashion-mnist")
    try:
        x_train = _read_idx(files["train-images-idx3-ubyte"], 16).reshape(-1, 28, 28, 1)
        y_train = _read_idx(files["train-labels-idx1-ubyte"], 8).astype(np.int64)
        x_test = _read_idx(files["t10k-images-idx3-ubyte"], 16).reshape(-1, 28, 28, 1)
        y_test = _read_idx(files["t10k-labels-idx1-ubyte"], 8).astype(np.int64)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"Fashion-MNIST files in {FASHION_DIR} are unreadable ({exc}); "
                        f"reinstall with: apt-get install --reinstall dataset-fashion-mnist") from None
    x_train = x_train.astype(np.float32) / 255.0
    x_test = x_test.astype(np.float32) / 255.0
    x_tr, y_tr, x_val, y_val = _split_val(x_train, y_train, val_fraction, seed)
    return Dataset("fashion-mnist", x_tr, y_tr, x_val, y_val, x_test, y_test, 10)


def _npz(path: Path, val_fraction: float, seed: int) -> Dataset:
    if not path.exists():
        raise DataError(f"data file {path} does not exist; pass an existing .npz file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:  # noqa: BLE001 - numpy raises many kinds for a bad file
        raise DataError(f"{path} is not a readable .npz file ({type(exc).__name__}: {exc}); "
                        f"save arrays with numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)") from None
    keys = set(arrays)
    if {"x_train", "y_train", "x_test", "y_test"} <= keys:
        x_train, y_train = arrays["x_train"], arrays["y_train"]
        x_test, y_test = arrays["x_test"], arrays["y_test"]
        _check_pair(x_train, y_train, "train", path)
        if {"x_val", "y_val"} <= keys:
            x_val, y_val = arrays["x_val"], arrays["y_val"]
        else:
            x_train, y_train, x_val, y_val = _split_val(x_train, y_train, val_fraction, seed)
    elif {"x", "y"} <= keys:
        x, y = arrays["x"], arrays["y"]
        _check_pair(x, y, "x/y", path)
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(x))
        n_test = max(1, int(round(len(x) * 0.2)))
        x_test, y_test = x[order[:n_test]], y[order[:n_test]]
        x_train, y_train, x_val, y_val = _split_val(x[order[n_test:]], y[order[n_test:]], val_fraction, seed)
    else:
        raise DataError(f"{path} holds arrays {sorted(keys)}; expected x_train, y_train, x_test, y_test "
                        f"(optionally x_val, y_val) or x, y")
    for name, (xx, yy) in {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}.items():
        _check_pair(xx, yy, name, path)
    return _finish(path.stem, x_train, y_train, x_val, y_val, x_test, y_test)


def _check_pair(x: np.ndarray, y: np.ndarray, name: str, source: Any) -> None:
    if np.ndim(x) == 0 or np.ndim(y) == 0:
        raise DataError(f"{source}: {name} inputs and labels must be arrays with one row per example; got shapes "
                        f"{np.shape(x)} and {np.shape(y)}")
    if len(x) != len(y):
        raise DataError(f"{source}: {name} has {len(x)} inputs but {len(y)} labels; they must match")
    if len(x) == 0:
        raise DataError(f"{source}: the {name} split is empty")
    if x.dtype.kind not in "fiub":
        raise DataError(f"{source}: {name} inputs have dtype {x.dtype}; expected numbers")
    _check_finite(x, f"{name} inputs", source)
    if y.dtype.kind == "f":
        _check_finite(y, f"{name} labels", source)


def _check_finite(a: np.ndarray, what: str, source: Any) -> None:
    """Refuse NaN/Inf: training on them "succeeds" with NaN weights and a meaningless model."""
    if a.dtype.kind not in "fc":
        return
    bad = int(a.size - np.count_nonzero(np.isfinite(a)))
    if bad:
        share = "all" if bad == a.size else f"{bad:,} of {a.size:,}"
        raise DataError(f"{source}: {share} values of the {what} are NaN or infinite; clean or impute them "
                        f"(e.g. numpy.nan_to_num) before compressing")


def check_dataset(data: Dataset) -> Dataset:
    """Check every split of ``data``: as many labels as inputs, not empty, numbers, no NaN/Inf.

    Raises
    ------
    DataError
        One line naming the split and what is wrong.
    """
    for name, (x, y) in {"train": (data.x_train, data.y_train), "val": (data.x_val, data.y_val),
                         "test": (data.x_test, data.y_test)}.items():
        _check_pair(np.asarray(x), np.asarray(y), name, f"data '{data.name}'")
    return data


def _labels(y: np.ndarray) -> np.ndarray:
    """Integer class ids from int labels, (N, 1) labels or one-hot rows."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 2 and y.shape[1] > 1 and np.all((y == 0) | (y == 1)) and np.all(y.sum(axis=1) == 1):
        return y.argmax(axis=1).astype(np.int64)
    if y.ndim == 1 and (y.dtype.kind in "iub" or np.all(np.mod(y, 1) == 0)):
        return y.astype(np.int64)
    return y


def _finish(name: str, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
            x_test: np.ndarray, y_test: np.ndarray) -> Dataset:
    ys = [_labels(np.asarray(y)) for y in (y_train, y_val, y_test)]
    num_classes = None
    if all(y.ndim == 1 and y.dtype.kind == "i" for y in ys):
        low = min(int(y.min()) for y in ys)
        if low < 0:
            raise DataError(f"{name}: labels must be class ids >= 0; found {low}")
        num_classes = max(int(y.max()) for y in ys) + 1
    xs = [np.asarray(x) for x in (x_train, x_val, x_test)]
    xs = [x.astype(np.float32) if x.dtype.kind == "f" and x.dtype != np.float32 else x for x in xs]
    shapes = {tuple(x.shape[1:]) for x in xs}
    if len(shapes) != 1:
        raise DataError(f"{name}: splits have different input shapes {sorted(shapes)}; they must agree")
    return Dataset(name, xs[0], ys[0], xs[1], ys[1], xs[2], ys[2], num_classes)


def _import_function(spec: str) -> Any:
    module_name, _, func_name = spec.rpartition(":")
    try:
        if module_name.endswith(".py") or "/" in module_name:
            path = Path(module_name)
            if not path.exists():
                raise DataError(f"--data {spec!r}: module file {path} does not exist")
            mod_spec = importlib.util.spec_from_file_location(path.stem, path)
            assert mod_spec is not None and mod_spec.loader is not None
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[path.stem] = module
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - a user module can raise anything on import
        raise DataError(f"--data {spec!r}: cannot import {module_name} ({type(exc).__name__}: {exc})") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise DataError(f"--data {spec!r}: {module_name} has no function {func_name!r}")
    return func


def _dataset_to_arrays(ds: Any, what: str, spec: str, limit: int = 200_000) -> tuple[np.ndarray, np.ndarray]:
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    batched = None
    for item in ds:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise DataError(f"--data {spec!r}: the {what} dataset must yield (x, y) pairs")
        x, y = (np.asarray(v) for v in item)
        if batched is None:
            batched = x.ndim >= 1 and y.ndim >= 1 and x.shape[0] == y.shape[0] and x.ndim > 1
        if batched:
            xs.extend(x)
            ys.extend(y)
        else:
            xs.append(x)
            ys.append(y)
        if len(xs) >= limit:
            break
    if not xs:
        raise DataError(f"--data {spec!r}: the {what} dataset is empty")
    return np.stack(xs), np.stack(ys)


def _from_function(spec: str) -> Dataset:
    func = _import_function(spec)
    try:
        result = func()
    except Exception as exc:  # noqa: BLE001 - user code
        raise DataError(f"--data {spec!r}: the function raised {type(exc).__name__}: {exc}") from None
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise DataError(f"--data {spec!r}: the function must return (train, validation) tf.data datasets; "
                        f"got {type(result).__name__}")
    x_train, y_train = _dataset_to_arrays(result[0], "train", spec)
    x_val, y_val = _dataset_to_arrays(result[1], "validation", spec)
    return _finish(spec, x_train, y_train, x_val, y_val, x_val, y_val)


def _model_io(model: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    ins, outs = model.input_shape, model.output_shape
    if isinstance(ins, list) or isinstance(outs, list):
        raise DataError(f"model has {len(model.inputs)} inputs and {len(model.outputs)} outputs; --data supports "
                        f"single-input single-output models (use module:function data for others)")
    return tuple(ins[1:]), tuple(outs[1:])


def fit_to_model(data: Dataset, model: Any) -> Dataset:
    """Check ``data`` against ``model``'s input and output; add a trailing channel axis when that is the
    only difference (e.g. (N, 28, 28) images for a (28, 28, 1) input).

    Raises
    ------
    DataError
        Input shape or label range that does not fit the model; bad splits (:func:`check_dataset`).
    """
    check_dataset(data)
    in_shape, out_shape = _model_io(model)
    got = data.input_shape
    if len(got) + 1 == len(in_shape) and in_shape[-1] == 1 and _shape_ok(got + (1,), in_shape):
        data = replace(data, x_train=data.x_train[..., None], x_val=data.x_val[..., None],
                       x_test=data.x_test[..., None])
        got = data.input_shape
    if not _shape_ok(got, in_shape):
        raise DataError(f"data '{data.name}' has inputs of shape {got} but the model expects "
                        f"{tuple('None' if d is None else d for d in in_shape)}; pass data that matches the model "
                        f"(or a model for this data)")
    if data.num_classes is not None and out_shape:
        n_out = out_shape[-1]
        if n_out is not None and n_out > 1 and data.num_classes > n_out:
            raise DataError(f"data '{data.name}' has labels 0..{data.num_classes - 1} but the model outputs "
                            f"{n_out} classes; the labels must be < {n_out}")
    return data


def _shape_ok(got: tuple[int, ...], want: tuple[Any, ...]) -> bool:
    return len(got) == len(want) and all(w is None or w == g for g, w in zip(got, want))
