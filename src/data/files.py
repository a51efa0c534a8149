"""The image datasets on disk: torchvision's layouts and published MD5s, its download, and one-line errors.

MNIST is read straight from the four original IDX `.gz` files and CIFAR-10 from the python pickle batches,
so nothing is extracted or rewritten in the user's data directory. Every error names the file or directory
and is a DataError (a ConfigError: the command line prints it as one line).
"""

import codecs
import gzip
import hashlib
import pickle
import shutil
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torchvision

from src.errors import DataError

_CIFAR = torchvision.datasets.CIFAR10
_FLAG_NO_CHECKSUMS = "data.verify_checksums=false"


@dataclass(frozen=True)
class DatasetFiles:
    """One dataset's files under `root/folder`, torchvision's MD5 for each, and how to read a split."""

    name: str
    folder: str
    md5: dict[str, str]  # file name -> torchvision's published MD5
    splits: dict[str, tuple[str, ...]]  # "train" / "test" -> the files holding that split
    shape: tuple[int, int, int]  # (C, H, W) of one image
    read: Callable[["DatasetFiles", list[Path]], tuple[torch.Tensor, torch.Tensor]]
    download: Callable[[str], object]  # torchvision's dataset class with download=True, given root
    how_to_copy: str  # how to provide the files by hand, for the error messages
    num_classes: int = 10

    def directory(self, root: str | Path) -> Path:
        """The absolute directory where this dataset's files are expected."""
        return Path(root).expanduser().resolve() / self.folder


def _idx_payload(path: Path, magic: int) -> tuple[tuple[int, ...], bytes]:
    """(dims, raw bytes) of a gzipped big-endian IDX file whose magic number must be `magic`."""
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError; truncation is EOFError
        raise DataError(f"{path}: not a readable gzip file ({err})") from None
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(f"{path}: bad magic number {found}, expected {magic} for this IDX file")
    ndim = magic & 0xFF  # the magic's last byte is the number of dimensions, the third the dtype (8 = uint8)
    header = 4 * (ndim + 1)
    dims = tuple(int.from_bytes(raw[4 * (i + 1) : 4 * (i + 2)], "big") for i in range(ndim))
    if len(raw) != header + int(np.prod(dims)):
        size = len(raw) - header
        raise DataError(f"{path}: {size} bytes of data where its header {dims} promises {int(np.prod(dims))}")
    return dims, raw[header:]


def _read_mnist(files: DatasetFiles, paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 (N,1,28,28) and labels int64 (N,) from the (images, labels) IDX .gz pair."""
    image_path, label_path = paths
    dims, pixels = _idx_payload(image_path, magic=2051)  # 0x00000803: uint8, 3 dims
    if dims[1:] != files.shape[1:]:
        raise DataError(f"{image_path}: images of size {dims[1:]}, expected {files.shape[1:]}")
    (count,), labels = _idx_payload(label_path, magic=2049)  # 0x00000801: uint8, 1 dim
    if count != dims[0]:
        raise DataError(f"{label_path}: {count} labels for the {dims[0]} images of {image_path.name}")
    x = torch.frombuffer(bytearray(pixels), dtype=torch.uint8).view(dims[0], *files.shape)  # (N,1,28,28)
    return x, _labels(torch.frombuffer(bytearray(labels), dtype=torch.uint8), files, label_path)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes (numpy's raw array data), latin1 only."""
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"bytes encoded as {encoding!r}: only latin1 occurs in array data")
    return codecs.encode(text, "latin1")


_RECONSTRUCT, _SCALAR = np.zeros(0).__reduce__()[0], np.int64(0).__reduce__()[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]  # protocol 5's array from its raw bytes
_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")


class BatchUnpickler(pickle.Unpickler):
    """Unpickles what a CIFAR-10 python batch holds and nothing else: dicts, lists, str, bytes, numbers and
    numpy arrays. Any other global (os.system, builtins.eval, a class whose __reduce__ runs code) is refused
    before it is looked up, so a planted file cannot run code, whatever data.verify_checksums says."""

    # (module, name) -> the object. The genuine batches (Python 2, protocol 2) name numpy.core.multiarray,
    # numpy >= 2 pickles numpy._core.multiarray: the same functions, taken from an array's and a number's
    # own __reduce__ so that either numpy provides them; `scalar` rebuilds a numpy number, `encode` protocol
    # 2's bytes, `_frombuffer` protocol 5's arrays.
    ALLOWED = {
        **{(m, "_reconstruct"): _RECONSTRUCT for m in _MULTIARRAY},
        **{(m, "scalar"): _SCALAR for m in _MULTIARRAY},
        **{(m, "_frombuffer"): _FROMBUFFER for m in ("numpy.core.numeric", "numpy._core.numeric")},
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused to load {module}.{name}: a CIFAR-10 batch holds only arrays, lists, numbers and "
                "strings (a file built to run code when unpickled?)"
            ) from None


def read_batch(path: Path) -> dict:
    """One CIFAR-10 python batch as a dict, through BatchUnpickler (latin1, as torchvision: the original
    batches are Python 2 pickles with str keys)."""
    with path.open("rb") as f:
        entry = BatchUnpickler(f, encoding="latin1").load()
    if not isinstance(entry, dict):
        raise pickle.UnpicklingError(f"a {type(entry).__name__}, not a dict")
    return entry


def _read_cifar(files: DatasetFiles, paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 (N,3,32,32) and labels int64 (N,) from CIFAR-10 python pickle batches, in order."""
    images, labels = [], []
    for path in paths:
        try:
            entry = read_batch(path)
            data, batch_labels = np.asarray(entry["data"]), list(entry["labels"])
        except Exception as err:  # a damaged pickle can raise almost anything; name the file whatever it is
            reason = " ".join(f"{type(err).__name__}: {err}".split())
            raise DataError(f"{path}: not a CIFAR-10 python batch ({reason})") from None
        per_image = int(np.prod(files.shape))
        if data.dtype != np.uint8 or data.shape != (len(batch_labels), per_image):
            found = f"{data.dtype} {data.shape} with {len(batch_labels)} labels"
            raise DataError(f"{path}: 'data' is {found}, expected uint8 (N, {per_image}) with N labels")
        images.append(torch.from_numpy(data).view(-1, *files.shape))  # (N,3072) rows are CHW planes
        labels.append(_labels(torch.tensor(batch_labels), files, path))
    return torch.cat(images), torch.cat(labels)


def _labels(y: torch.Tensor, files: DatasetFiles, path: Path) -> torch.Tensor:
    """Labels as int64, checked to lie in [0, num_classes)."""
    if len(y) and (y.min() < 0 or y.max() >= files.num_classes):
        raise DataError(f"{path}: labels outside 0..{files.num_classes - 1}")
    return y.long()


MNIST_FILES = DatasetFiles(
    name="MNIST",
    folder="MNIST/raw",  # where torchvision.datasets.MNIST keeps (and downloads) the raw files
    md5=dict(torchvision.datasets.MNIST.resources),
    splits={
        "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    },
    shape=(1, 28, 28),
    read=_read_mnist,
    download=partial(torchvision.datasets.MNIST, train=False, download=True),
    how_to_copy="copy the four original .gz files there",
)

CIFAR10_FILES = DatasetFiles(
    name="CIFAR-10",
    folder=_CIFAR.base_folder,
    md5=dict(_CIFAR.train_list + _CIFAR.test_list + [[_CIFAR.meta["filename"], _CIFAR.meta["md5"]]]),
    splits={"train": tuple(f for f, _ in _CIFAR.train_list), "test": tuple(f for f, _ in _CIFAR.test_list)},
    shape=(3, 32, 32),
    read=_read_cifar,
    download=partial(_CIFAR, train=False, download=True),
    how_to_copy=f"copy the original python batches there (a local rebuild also needs {_FLAG_NO_CHECKSUMS})",
)


# what to do about a damaged file: torchvision's download skips present files, so the bad one must go first
_REFETCH = "delete it and run with data.download=true to fetch it again, or copy the original file there"


def _md5(path: Path) -> str:
    """Hex MD5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _missing(files: DatasetFiles, root: str | Path) -> list[str]:
    """Names of the dataset's files absent from its directory."""
    return [name for name in files.md5 if not (files.directory(root) / name).is_file()]


def _first_missing(path: Path) -> Path | None:
    """The outermost directory on the way to ``path`` that does not exist yet (None when ``path`` exists)."""
    missing = None
    while not path.exists():
        missing, path = path, path.parent
    return missing


def ensure_present(files: DatasetFiles, root: str | Path, download: bool) -> None:
    """Download missing files with torchvision when allowed; otherwise fail in one line saying what and where."""
    missing, where = _missing(files, root), files.directory(root)
    if not missing:
        return
    expected = f"missing {', '.join(missing)} in {where}"
    if not download:
        raise DataError(
            f"{files.name} not found: {expected}; run once with data.download=true on a machine with internet, "
            f"or {files.how_to_copy}"
        )
    for name in files.md5:  # torchvision would overwrite a present file whose MD5 differs: never do that
        path = where / name
        if path.is_file() and _md5(path) != files.md5[name]:
            raise DataError(
                f"{files.name}: refusing to download into {where}: {path} is not torchvision's file "
                f"and the download would overwrite it; provide the missing {', '.join(missing)} by hand"
            )
    made = _first_missing(where)  # torchvision makes the directories; a failed download must not leave them
    try:
        files.download(str(Path(root).expanduser().resolve()))
    except (OSError, RuntimeError) as err:  # URLError is an OSError; torchvision wraps mirror failures
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        reason = " ".join(f"{type(err).__name__}: {err}".split())  # torchvision's text spans lines
        reason = reason if len(reason) <= 300 else reason[:297] + "..."
        raise DataError(
            f"{files.name} download failed ({reason}); {expected}: download on a machine with internet, "
            f"or {files.how_to_copy}"
        ) from None


def verify_md5(files: DatasetFiles, root: str | Path) -> None:
    """Check every file against torchvision's published MD5; a mismatch names the file and the opt-out."""
    for name, expected in files.md5.items():
        path = files.directory(root) / name
        found = _md5(path)
        if found != expected:
            raise DataError(
                f"{files.name} checksum mismatch: {path} has MD5 {found}, torchvision publishes {expected}; "
                f"for a deliberate local copy such as a rebuild set {_FLAG_NO_CHECKSUMS}, else {_REFETCH}"
            )


def load_split(files: DatasetFiles, root: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One split as uint8 images (N,C,H,W) and int64 labels (N,); `ensure_present` has checked the files."""
    try:
        return files.read(files, [files.directory(root) / name for name in files.splits[split]])
    except DataError as err:  # the readers name the file and the damage; the fix is the same for all
        raise DataError(f"{err}; the file is damaged or not the original: {_REFETCH}") from None
