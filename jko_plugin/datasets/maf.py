r"""MAF's tabular benchmarks (POWER, GAS, HEPMASS, MINIBOONE, BSDS300): local files, MAF's preprocessing."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor

from ._common import _tensor

__all__ = ["MAFSplits", "MAF_DATASETS", "load_maf"]


@dataclass(frozen=True)
class MAFSplits:
    """The standard train / validation / test splits of a MAF benchmark, float32 ``(n, d)`` each."""

    train: Tensor
    validation: Tensor
    test: Tensor


def _split_tail(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # MAF's split: the last 10% is test, the last 10% of the rest validation.
    n_test = int(0.1 * data.shape[0])
    test, rest = data[data.shape[0] - n_test :], data[: data.shape[0] - n_test]
    n_val = int(0.1 * rest.shape[0])
    return rest[: rest.shape[0] - n_val], rest[rest.shape[0] - n_val :], test


def _normalise_by_train_val(train: np.ndarray, val: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, ...]:
    both = np.vstack((train, val))
    mu, s = both.mean(axis=0), both.std(axis=0)
    return (train - mu) / s, (val - mu) / s, (test - mu) / s


def _power(files: dict[str, Path]) -> tuple[np.ndarray, ...]:
    rng = np.random.RandomState(42)
    data = np.load(files["data.npy"]).astype(np.float64)
    rng.shuffle(data)
    n = data.shape[0]
    data = np.delete(data, 3, axis=1)  # global intensity
    data = np.delete(data, 1, axis=1)  # global reactive power
    voltage_noise = 0.01 * rng.rand(n, 1)
    gap_noise = 0.001 * rng.rand(n, 1)
    sm_noise = rng.rand(n, 3)
    time_noise = np.zeros((n, 1))
    data = data + np.hstack((gap_noise, voltage_noise, sm_noise, time_noise))
    return _normalise_by_train_val(*_split_tail(data))


def _gas_clean(data: np.ndarray) -> np.ndarray:
    """MAF's GAS cleaning on the sensor columns: repeatedly drop the first column correlated
    (> 0.98) with another, then standardise (sample std, ddof = 1, as pandas)."""
    while True:
        corr = np.corrcoef(data, rowvar=False)
        counts = (corr > 0.98).sum(axis=1)
        if not (counts > 1).any():
            break
        data = np.delete(data, int(np.nonzero(counts > 1)[0][0]), axis=1)
    return (data - data.mean(0)) / data.std(0, ddof=1)


def _gas(files: dict[str, Path]) -> tuple[np.ndarray, ...]:
    try:
        import pandas as pd
    except ImportError as err:
        raise ImportError(
            "GAS's ethylene_CO.pickle is a pandas DataFrame: reading it needs pandas (pip install pandas)"
        ) from err
    frame = pd.read_pickle(files["ethylene_CO.pickle"])
    frame = frame.drop(columns=["Meth", "Eth", "Time"])
    return _split_tail(_gas_clean(frame.to_numpy(dtype=np.float64)))


def _read_csv(path: Path) -> np.ndarray:
    return np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2, dtype=np.float64)


def _hepmass(files: dict[str, Path]) -> tuple[np.ndarray, ...]:
    train, test = _read_csv(files["1000_train.csv"]), _read_csv(files["1000_test.csv"])
    # Keep the signal class (label 1 in column 0); the test file carries one extra trailing column.
    train = train[train[:, 0] == 1][:, 1:]
    test = test[test[:, 0] == 1][:, 1:-1]
    mu, s = train.mean(0), train.std(0, ddof=1)
    train = (train - mu) / s
    test = (test - mu[: test.shape[1]]) / s[: test.shape[1]]
    # Drop features whose smallest value recurs more than 5 times (MAF's rule for discrete ones).
    keep = [i for i, col in enumerate(train.T) if Counter(col)[col.min()] <= 5]
    test = test[:, [i for i in keep if i < test.shape[1]]]
    train = train[:, keep]
    n_val = int(0.1 * train.shape[0])
    return train[: train.shape[0] - n_val], train[train.shape[0] - n_val :], test


def _miniboone(files: dict[str, Path]) -> tuple[np.ndarray, ...]:
    return _normalise_by_train_val(*_split_tail(np.load(files["data.npy"]).astype(np.float64)))


def _bsds300(files: dict[str, Path]) -> tuple[np.ndarray, ...]:
    try:
        import h5py
    except ImportError as err:
        raise ImportError("BSDS300.hdf5 is an HDF5 file: reading it needs h5py (pip install h5py)") from err
    with h5py.File(files["BSDS300.hdf5"], "r") as f:
        return tuple(np.asarray(f[k], dtype=np.float64) for k in ("train", "validation", "test"))


#: MAF benchmark name -> (folder under the data root, files in it, loader).
MAF_DATASETS: dict[str, tuple[str, tuple[str, ...], Callable[[dict[str, Path]], tuple[np.ndarray, ...]]]] = {
    "power": ("power", ("data.npy",), _power),
    "gas": ("gas", ("ethylene_CO.pickle",), _gas),
    "hepmass": ("hepmass", ("1000_train.csv", "1000_test.csv"), _hepmass),
    "miniboone": ("miniboone", ("data.npy",), _miniboone),
    "bsds300": ("BSDS300", ("BSDS300.hdf5",), _bsds300),
}


def load_maf(name: str, root: str | Path) -> MAFSplits:
    """A MAF tabular benchmark from local files, with the standard preprocessing.

    The files are those of the MAF paper's data archive (Papamakarios, Pavlakou, Murray, "Masked
    autoregressive flow for density estimation", NeurIPS 2017; zenodo record 1161203), unpacked
    under ``root``: ``power/data.npy``, ``gas/ethylene_CO.pickle`` (needs pandas),
    ``hepmass/1000_train.csv`` and ``1000_test.csv``, ``miniboone/data.npy``,
    ``BSDS300/BSDS300.hdf5`` (needs h5py). ``root`` may also be the dataset's own folder.
    Preprocessing follows the MAF code: POWER drops two columns, adds uniform noise (seed 42) and
    standardises; GAS drops highly correlated sensors and standardises; HEPMASS keeps the signal
    class and drops discrete features; MINIBOONE standardises; BSDS300 is used as stored.

    Returns:
        ``MAFSplits(train, validation, test)``.

    Raises:
        ValueError: Unknown name. FileNotFoundError: ``root`` or a file is missing (the message
        gives the expected path). ImportError: pandas / h5py missing for GAS / BSDS300.
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in MAF_DATASETS:
        raise ValueError(f"name must be one of {sorted(MAF_DATASETS)}, got {name!r}")
    folder, names, loader = MAF_DATASETS[key]
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"MAF data directory {str(root)!r} does not exist: unpack the MAF data archive there so that "
            f"{str(root / folder / names[0])!r} exists"
        )
    base = root / folder if (root / folder).is_dir() else root
    files = {f: base / f for f in names}
    for f, p in files.items():
        if not p.is_file():
            raise FileNotFoundError(
                f"{key}: missing file {str(root / folder / f)!r}; put the MAF archive's {folder}/{f} there"
            )
    train, val, test = loader(files)
    return MAFSplits(_tensor(train), _tensor(val), _tensor(test))
