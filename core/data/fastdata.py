"""Fast data paths: images decoded once into a uint8 tensor, augmented and resized in batches.

The notebook decodes and resizes every image with PIL in a single-process DataLoader, which
starves a GPU by an order of magnitude. ``DeviceImages`` instead holds a whole dataset as one
uint8 tensor (N, 3, H, W) on the training device (CIFAR-10 is 150 MB) and turns index
batches into normalised float batches there: per-sample random crop with zero padding,
horizontal flip, resize (torchvision's own batched uint8 resize, so the pixels equal the
per-image path's) and normalisation, with a generator seeded per
epoch so the order and the augmentation of a resumed run repeat exactly. Datasets beyond the
memory budget, or augmentations that need per-image PIL-style ops (RandAugment,
TrivialAugment), stream through a multi-worker DataLoader with pinned memory instead.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2.functional import normalize, resize, to_dtype

from core.data.datasets import Images, sample_path, sample_paths, unwrap
from core.data.images import decode_threads, image_error, thread_map
from core.data.transforms import Preprocessing, _interp
from core.errors import DataError

DEVICE_AUGMENTS = ("none", "crop-flip")


def memory_budget(device: torch.device) -> int:
    """Bytes of uint8 image cache allowed on ``device`` (env TLWORK_CACHE_MB overrides)."""
    if "TLWORK_CACHE_MB" in os.environ:
        return int(float(os.environ["TLWORK_CACHE_MB"]) * 2**20)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.25)
    return 4 * 2**30


def decoded_size(dataset: Images, image_size: int, native_size: int | None) -> int:
    """Bytes the uint8 cache of ``dataset`` would take."""
    side = native_size or image_size
    return len(dataset) * 3 * side * side


def _raw_arrays(dataset: Images) -> tuple[np.ndarray, list[int]] | None:
    """torchvision CIFAR keeps its images as one (N, 32, 32, 3) array: no decoding needed."""
    base, where = unwrap(dataset)
    data = getattr(base, "data", None)
    if not (isinstance(data, np.ndarray) and data.ndim == 4 and data.shape[-1] == 3):
        return None
    targets = list(getattr(base, "targets"))
    if where is None:  # the array itself: no copy of CIFAR's 150 MB
        return data, targets
    return data[where], [targets[i] for i in where]


def decode_all(
    dataset: Images, image_size: int, interpolation: str = "bilinear"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images N×3×H×W, int64 labels) for a dataset of (PIL image, label) items.

    Images larger than ``image_size`` are resized to it as they are decoded (memory). When
    the rest all share one size they are kept at it, and batches are resized on the fly;
    otherwise they are resized to ``image_size`` too. Either way it is the per-image path's
    own tensor resize, with the model's interpolation, so the pixels come out the same.
    """
    raw = _raw_arrays(dataset)
    if raw is not None:
        array, targets = raw
        return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).contiguous(), torch.tensor(targets)
    from torchvision.transforms import v2

    square = [image_size, image_size]
    mode = _interp(interpolation)

    def load(i: int) -> tuple[np.ndarray | torch.Tensor, int]:
        """An HWC uint8 array, or a CHW tensor already resized when the image is too large."""
        try:
            img, label = dataset[i]
        except Exception as exc:  # a file that passed the cheap check but does not decode
            path = sample_path(dataset, i) or f"image {i}"
            raise DataError(f"{image_error(path, exc)}; see `tlwork check-data`") from None
        array = np.asarray(img)  # the pixels v2.ToImage would give, without a tensor per image
        if max(array.shape[:2]) > image_size and array.shape[:2] != (image_size, image_size):
            return v2.functional.resize(_chw(array), square, interpolation=mode, antialias=True), int(label)
        return array, int(label)

    paths = sample_paths(dataset)
    threads = decode_threads(paths) if paths is not None else min(16, os.cpu_count() or 1)
    pairs = thread_map(load, range(len(dataset)), threads)
    labels = torch.tensor([label for _, label in pairs])
    if all(isinstance(a, np.ndarray) for a, _ in pairs) and len({a.shape for a, _ in pairs}) == 1:
        return torch.from_numpy(np.stack([a for a, _ in pairs])).permute(0, 3, 1, 2).contiguous(), labels
    images = [_chw(a) if isinstance(a, np.ndarray) else a for a, _ in pairs]
    if len({tuple(t.shape) for t in images}) > 1:
        images = [t if list(t.shape[-2:]) == square else v2.functional.resize(t, square, interpolation=mode, antialias=True) for t in images]
    return torch.stack(images), labels


def _chw(array: np.ndarray) -> torch.Tensor:
    """An HWC uint8 array (or HW, for a grey image) as a CHW tensor."""
    t = torch.from_numpy(np.ascontiguousarray(array))
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)


class DeviceImages:
    """A dataset held as uint8 on the device, served as augmented, normalised batches."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, pre: Preprocessing, device: torch.device) -> None:
        self.device = device
        pin = device.type == "cuda"
        self.images = (images.pin_memory() if pin else images).to(device, non_blocking=True)
        self.labels = labels.to(device)
        self.pre = pre

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def nbytes(self) -> int:
        """Size of the cache."""
        return self.images.numel()

    def batch(
        self, index: torch.Tensor, augment: str = "none", gen: torch.Generator | None = None, channels_last: bool = False,
        params: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Float batch (B, 3, size, size) and labels for ``index`` (a tensor on the device).

        ``params`` are crop-flip draws made for a larger (global) batch and cut to ``index``.
        """
        x = self.images.index_select(0, index)
        if augment == "crop-flip":
            x = random_crop_flip(x, max(1, x.shape[-1] // 8), gen, params)
        if x.shape[-1] != self.pre.size or x.shape[-2] != self.pre.size:
            # torchvision's batched resize on uint8: the very op (and rounding) of the per-image path.
            x = resize(x, [self.pre.size, self.pre.size], interpolation=_interp(self.pre.interpolation), antialias=True)
        # The per-image path's own functions, so the float values are bit-identical to it.
        x = normalize(to_dtype(x, torch.float32, scale=True), list(self.pre.mean), list(self.pre.std))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.labels.index_select(0, index)

    def batches(
        self,
        order: Sequence[int] | torch.Tensor,
        batch_size: int,
        augment: str = "none",
        gen: torch.Generator | None = None,
        channels_last: bool = False,
        skip_batches: int = 0,
        shard: Any = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches in ``order`` (sample indices); the first ``skip_batches`` are drawn, not built.

        Skipped batches still consume their augmentation draws, so a run resumed mid-epoch
        augments the remaining batches exactly as the uninterrupted run did. With a
        ``core.training.strategy.Shard``, ``batch_size`` is the global batch: each is drawn for in
        full and this rank keeps its rows, so every sample is augmented as in one process.
        """
        order_t = torch.as_tensor(order, dtype=torch.long).to(self.device)
        for n, start in enumerate(range(0, order_t.numel(), batch_size)):
            index = order_t[start:start + batch_size]
            if n < skip_batches:
                if augment == "crop-flip":
                    random_crop_flip_params(index.numel(), max(1, self.images.shape[-1] // 8), self.device, gen)
                continue
            if shard is None or shard.world == 1:
                yield self.batch(index, augment, gen, channels_last)
                continue
            rows = torch.tensor(shard.rows(index.numel()), dtype=torch.long, device=self.device)
            params = None
            if augment == "crop-flip":
                drawn = random_crop_flip_params(index.numel(), max(1, self.images.shape[-1] // 8), self.device, gen)
                params = (drawn[0][rows], drawn[1][rows], drawn[2][rows])
            yield self.batch(index[rows], augment, gen, channels_last, params)


def random_crop_flip(
    x: torch.Tensor, padding: int, gen: torch.Generator | None,
    params: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Per-sample RandomCrop(size, padding, zero fill) + RandomHorizontalFlip(0.5) on a uint8 batch."""
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dev = x.device
    oy, ox, flip = params if params is not None else random_crop_flip_params(b, padding, dev, gen)
    rows = oy[:, None] + torch.arange(h, device=dev)[None, :]
    cols = ox[:, None] + torch.arange(w, device=dev)[None, :]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    bidx = torch.arange(b, device=dev)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def random_crop_flip_params(
    b: int, padding: int, device: torch.device, gen: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row offsets, column offsets and flip flags for ``b`` samples."""
    oy = torch.randint(0, 2 * padding + 1, (b,), device=device, generator=gen)
    ox = torch.randint(0, 2 * padding + 1, (b,), device=device, generator=gen)
    flip = torch.rand(b, device=device, generator=gen) < 0.5
    return oy, ox, flip


def epoch_generator(device: torch.device, seed: int, epoch: int) -> torch.Generator:
    """The augmentation generator of an epoch: depends only on (seed, epoch)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed * 7_919 + epoch)
    return gen
