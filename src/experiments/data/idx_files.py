"""Finding and checking the four IDX files of MNIST-style data sets before torchvision reads them.

torchvision's MNIST reads uncompressed files from ROOT/<Name>/raw/. Users have them gzipped or not,
in that layout or flat in one folder (Debian's dataset-fashion-mnist installs them flat and
recompressed, so torchvision's md5 list does not match). We accept all of these, check each
header so a bad file gets one clear sentence, and decompress into a cache laid out as torchvision
expects.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import struct
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from experiments.core.config import UserError
from experiments.core.state import write_atomically

if TYPE_CHECKING:
    import numpy as np

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # unsigned bytes, 3 and 1 dimensions


def candidates(root: Path, folder_name: str, name: str) -> list[Path]:
    raw = root / folder_name / "raw"
    return [raw / name, raw / f"{name}.gz", root / name, root / f"{name}.gz"]


def find_files(root: Path, folder_name: str) -> dict[str, Path]:
    """The first existing candidate for each of the four files that is there."""
    found = {}
    for key, name in FILES.items():
        path = next((p for p in candidates(root, folder_name, name) if p.is_file()), None)
        if path is not None:
            found[key] = path
    return found


def read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise UserError(
            f"{path} could not be read as {'gzip' if path.suffix == '.gz' else 'an IDX file'} ({error}); replace it with an intact copy."
        ) from None


def check_idx(path: Path, data: bytes | None, kind: str) -> int:
    """Check an IDX header against the file's length; return the number of items it holds.

    `data` is the decompressed content, or None to check an uncompressed file by its size.
    """
    if data is None:
        with path.open("rb") as f:
            header = f.read(16)
        size = path.stat().st_size
    else:
        header, size = data[:16], len(data)
    expected_magic, dims = (IMAGES_MAGIC, 3) if kind == "images" else (LABELS_MAGIC, 1)
    header_size = 4 + 4 * dims
    if len(header) < header_size:
        raise UserError(
            f"{path} is too short to be an IDX {kind} file ({size} bytes); replace it with an intact copy."
        )
    magic, *shape = struct.unpack(f">{1 + dims}I", header[:header_size])
    if magic != expected_magic:
        raise UserError(
            f"{path} is not an IDX {kind} file (magic number {magic}, expected {expected_magic}); "
            "check that the four files are not swapped or corrupt."
        )
    if kind == "images" and shape[1:] != [28, 28]:
        raise UserError(f"{path} holds {shape[1]}x{shape[2]} images; this data set needs 28x28.")
    expected_size = header_size + shape[0] * (784 if kind == "images" else 1)
    if size != expected_size:
        raise UserError(
            f"{path} is truncated or padded: its header promises {shape[0]} {kind} ({expected_size} bytes) "
            f"but it has {size} bytes; replace it with an intact copy."
        )
    return shape[0]


def prepare(root: Path, folder_name: str, cache_dir: Path) -> Path:
    """Return a root under which torchvision finds checked, uncompressed files in <folder_name>/raw/."""
    found = find_files(root, folder_name)
    if len(found) < len(FILES):
        raise FileNotFoundError(root)
    if all(
        path.parent == root / folder_name / "raw" and path.suffix != ".gz"
        for path in found.values()
    ):
        check_pairs({key: (path, None) for key, path in found.items()})
        return root
    key = hashlib.sha1(
        "".join(
            f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns};" for p in found.values()
        ).encode()
    ).hexdigest()[:16]
    cached_root = cache_dir / f"{folder_name}-{key}"
    raw = cached_root / folder_name / "raw"
    if all((raw / name).is_file() for name in FILES.values()):
        check_pairs({k: (raw / FILES[k], None) for k in FILES})
        return cached_root
    contents = {k: read_bytes(path) for k, path in found.items()}
    check_pairs({k: (found[k], contents[k]) for k in FILES})
    try:
        for k, data in contents.items():
            write_atomically(raw / FILES[k], data)  # a concurrent run never sees half a file
    except OSError as error:
        raise UserError(
            f"data.cache_dir={cache_dir} cannot be written ({error.strerror}); the gzipped files are unpacked there once: pass data.cache_dir=<a writable folder>."
        ) from None
    return cached_root


def check_pairs(files: dict[str, tuple[Path, bytes | None]]) -> None:
    for split in ("train", "test"):
        image_path, image_data = files[f"{split}_images"]
        label_path, label_data = files[f"{split}_labels"]
        n_images = check_idx(image_path, image_data, "images")
        n_labels = check_idx(label_path, label_data, "labels")
        if n_images != n_labels:
            raise UserError(
                f"{image_path} holds {n_images} images but {label_path} holds {n_labels} labels; "
                "they must come from the same release."
            )


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write unsigned bytes as an IDX file (gzipped when the name ends in .gz): for small test sets."""
    header = struct.pack(f">I{array.ndim}I", 0x0800 | array.ndim, *array.shape)
    data = header + array.astype("uint8").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def write_fake_set(folder: Path, n_train: int, n_test: int, gz: bool = True, seed: int = 0) -> Path:
    """Four small MNIST-shaped IDX files in `folder`, learnable: each class is a bright bar at its
    own rows on noise. For tests and the benchmark's smoke mode, which may not download anything."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 60, (n, 28, 28))
        for i, label in enumerate(labels):
            images[i, 2 * label + 4 : 2 * label + 6, 4:24] = 255
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{FILES[f'{split}_images']}{suffix}", images)
        write_idx(folder / f"{FILES[f'{split}_labels']}{suffix}", labels)
    return folder


def download(dataset_class: type, root: Path, scratch: Path) -> None:
    """Let torchvision download into a scratch folder, keeping its progress chatter out of the run,
    and move the files into root/<Name>/raw/ only once all four arrived: a failed download leaves
    nothing in root."""
    import shutil

    folder = dataset_class.__name__
    scratch.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"download-{folder}-", dir=scratch))
    try:
        chatter = io.StringIO()
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            dataset_class(str(work), train=True, download=True)
            dataset_class(str(work), train=False, download=True)
        target = root / folder / "raw"
        target.mkdir(parents=True, exist_ok=True)
        for name in FILES.values():
            shutil.move(str(work / folder / "raw" / name), target / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
