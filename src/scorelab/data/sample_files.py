"""Image sets on disk, as generative-model evaluations exchange them: folders of PNGs, ``.npz`` files, shards.

Reading is lazy (a slice loads only its images), so 50k-image folders never sit in memory whole. Writing goes
through :func:`scorelab.core.io.atomic_path`: a crash leaves whole files only.

Accepted ``.npz`` layouts: uint8 ``[N, H, W, C]`` or ``[N, H, W]`` under ``x``, ``arr_0``, ``samples`` or
``images`` (the conventions of scorelab, OpenAI's guided-diffusion and EDM). A folder holds either images
(``.png``, ``.jpg``, ``.jpeg``, sorted by name, searched recursively) or ``.npz`` shards (sorted by name).
"""
from __future__ import annotations

import os
from bisect import bisect_right
from pathlib import Path

import numpy as np
import torch

from ..core.errors import UserError
from ..core.io import atomic_path, load_npz, save_npz_atomic

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NPZ_KEYS = ("x", "arr_0", "samples", "images")


MAX_SIDE = 16384               # pixels per side of one image file; larger headers are refused before decoding
MAX_PIXELS = 64 * 1024 * 1024  # pixels of one image file (PIL's own bomb limit is ~89M)
CHANNELS = (1, 3)              # grey or RGB: what the feature extractors take


def _npz_images(path: Path) -> np.ndarray:
    data = load_npz(path)  # a truncated or corrupt file: one UserError naming it
    key = next((k for k in NPZ_KEYS if k in data), None)
    if key is None:
        raise UserError(f"{path} has no image array (keys {sorted(data)}); expected one of {NPZ_KEYS} holding "
                        "uint8 [N, H, W, C]")
    x = data[key]
    if x.dtype != np.uint8 or x.ndim not in (3, 4):
        raise UserError(f"{path}: '{key}' is {x.dtype} {x.shape}; expected uint8 images [N, H, W, C] or "
                        "[N, H, W] in [0, 255] (sample.py writes them so for images)")
    n, h, w = x.shape[:3]
    c = x.shape[3] if x.ndim == 4 else 1
    problem = ("holds no images" if n < 1 else f"holds {h}x{w} images" if h < 1 or w < 1 else
               f"holds images of {c} channels (1 grey or 3 RGB expected)" if c not in CHANNELS else None)
    if problem:
        raise UserError(f"{path}: '{key}' of shape {list(x.shape)} {problem}; expected uint8 images [N, H, W, C] "
                        "with N >= 1, H, W >= 1 and C = 1 or 3 (or [N, H, W] for grey): write the samples again")
    return x[..., None] if x.ndim == 3 else x


def read_image(path: Path) -> np.ndarray:
    """One image file as uint8 ``[H, W, C]`` (``C`` 1 for grey modes, else 3: RGB).

    Its size is checked from the header before any pixel is decoded: no side over :data:`MAX_SIDE`, no more
    than :data:`MAX_PIXELS` pixels, none of zero size (PIL's decompression-bomb guard is turned into the same error).

    Raises:
        UserError: naming the file: unreadable (corrupt, truncated, not an image), too large, or empty.
    """
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w < 1 or h < 1:
                    raise UserError(f"image {path} has size {w}x{h}; delete it or write it again")
                if w > MAX_SIDE or h > MAX_SIDE or w * h > MAX_PIXELS:
                    raise UserError(f"image {path} claims a size of {w}x{h} pixels, over the limit of {MAX_SIDE} per "
                                    f"side and {MAX_PIXELS} in all (a decompression bomb?); refused without decoding "
                                    "it: remove it from the samples")
                arr = np.asarray(im.convert("L") if im.mode in ("L", "I;16", "I", "1") else im.convert("RGB"))
    except UserError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UserError(f"image {path} is refused as a decompression bomb ({' '.join(str(exc).split())[:160]}); "
                        "remove it from the samples") from None
    except Exception as exc:  # UnidentifiedImageError, OSError (truncated), SyntaxError, zlib errors, ...
        raise UserError(f"image {path} cannot be read ({type(exc).__name__}: {' '.join(str(exc).split())[:160]}); "
                        "it may be truncated or corrupt: delete it or write it again") from None
    return arr[..., None] if arr.ndim == 2 else arr


def _to_tensor(x: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, H, W, C]`` -> ``[N, C, H, W]``."""
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


class ImageSet:
    """A lazily read set of uint8 images: ``len(s)``, ``s.read(start, stop) -> [n, C, H, W]``.

    Args:
        path: a folder of images or of ``.npz`` shards, or one ``.npz`` file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        if self.path.is_file() and self.path.suffix == ".npz":
            self._arrays, self._files = [_npz_images(self.path)], None
        elif self.path.is_dir():
            files = sorted(p for p in self.path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            shards = sorted(p for p in self.path.glob("*.npz") if p.is_file())
            if files and shards:
                raise UserError(f"{self.path} holds both images and .npz files; point at one kind")
            if not files and not shards:
                raise UserError(f"{self.path} holds no images ({', '.join(IMAGE_SUFFIXES)}) and no .npz shards")
            self._files = files or None
            self._arrays = [_npz_images(p) for p in shards] if shards else None
        else:
            raise UserError(f"samples={self.path} is neither a folder of images or .npz shards nor an .npz file")
        if self._arrays is not None:
            shapes = {a.shape[1:] for a in self._arrays}
            if len(shapes) > 1:
                raise UserError(f"the shards in {self.path} hold images of different shapes {sorted(shapes)}")
            self._offsets = np.cumsum([0] + [len(a) for a in self._arrays]).tolist()

    def __len__(self) -> int:
        return len(self._files) if self._files is not None else self._offsets[-1]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the first image."""
        return tuple(self.read(0, 1).shape[1:])

    def read(self, start: int, stop: int) -> torch.Tensor:
        """uint8 images ``[stop - start, C, H, W]``."""
        stop = min(stop, len(self))
        if self._files is not None:
            arrays = [read_image(p) for p in self._files[start:stop]]
            if len({a.shape for a in arrays}) > 1:
                raise UserError(f"images in {self.path} differ in size; FID needs equally sized images")
            return _to_tensor(np.stack(arrays))
        parts, i = [], start
        while i < stop:
            k = bisect_right(self._offsets, i) - 1
            lo = i - self._offsets[k]
            hi = min(stop - self._offsets[k], len(self._arrays[k]))
            parts.append(self._arrays[k][lo:hi])
            i += hi - lo
        return _to_tensor(np.concatenate(parts))


def write_png_images(images: torch.Tensor, folder: str | os.PathLike, first_index: int) -> list[Path]:
    """Write uint8 ``[B, C, H, W]`` as ``<folder>/<index:06d>.png`` (index = position in the whole set)."""
    from PIL import Image

    folder = Path(folder)
    paths = []
    for k, img in enumerate(images.cpu()):
        arr = img.permute(1, 2, 0).numpy()
        path = folder / f"{first_index + k:06d}.png"
        with atomic_path(path) as tmp:
            Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(tmp, format="PNG")
        paths.append(path)
    return paths


def write_npz_shard(images: torch.Tensor, folder: str | os.PathLike, first_index: int,
                    seeds: list[int] | None = None, labels: list[int] | None = None) -> Path:
    """Write uint8 ``[B, C, H, W]`` as ``<folder>/shard_<first index:06d>.npz`` (``x`` ``[B, H, W, C]``, seeds and,
    for class-conditional samples, the ``labels`` they were drawn for)."""
    arrays = {"x": images.cpu().permute(0, 2, 3, 1).numpy()}
    if seeds is not None:
        arrays["seeds"] = np.asarray(seeds, dtype=np.int64)
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
    return save_npz_atomic(Path(folder) / f"shard_{first_index:06d}.npz", **arrays)
