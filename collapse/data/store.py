"""Crop store: every person crop decoded and cut once, kept as one uint8 memory-mapped array.

A store holds, per instance, a crop of (input size + margin) pixels at the input crop's pixel density,
the image->store affine, and keypoints in store coordinates. The crop region is the SimpleBaseline one:
the box widened to the input aspect ratio, then enlarged 1.25x. JPEG decoding happens here and never
again; stores are keyed by split, input size and margin and reused by every run.
"""
import contextlib
import fcntl
import json
import multiprocessing as mp
import os
import shutil
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..augment import transform_points, warp
from ..runs import atomic_write_json
from .coco import DataError, annotation_path, image_dir, load_coco, person_instances
from .skeleton import SKELETONS, for_channels

try:  # TorchCodec, the PyTorch ecosystem's image decoder (torchvision's is deprecated since 0.29), needs
    from torchcodec.decoders import decode_image, decode_jpeg  # torch >= 2.11: an older host decodes with PIL
except (ImportError, OSError, RuntimeError):
    decode_image = decode_jpeg = None

BOX_ENLARGE = 1.25


def store_hw(input_hw, margin):
    h, w = input_hw
    return 2 * round(h * margin / 2), 2 * round(w * margin / 2)


def crop_affines(bbox, input_hw, shw):
    """(N,3,3) image -> store pixel maps for boxes (N,4) xywh."""
    (h, w), (hs, ws) = input_hw, shw
    x, y, bw, bh = [torch.as_tensor(bbox[:, i], dtype=torch.float64) for i in range(4)]
    cx, cy = x + bw / 2, y + bh / 2
    aspect = w / h
    bw2 = torch.where(bw > aspect * bh, bw, bh * aspect) * BOX_ENLARGE
    s = w / bw2  # store pixels per image pixel (same as the input crop's density)
    m = torch.zeros(len(x), 3, 3, dtype=torch.float64)
    m[:, 0, 0] = m[:, 1, 1] = s
    m[:, 0, 2], m[:, 1, 2] = ws / 2 - s * cx, hs / 2 - s * cy
    m[:, 2, 2] = 1
    return m


class CropStore:
    def __init__(self, path):
        with open(os.path.join(path, "info.json")) as f:
            self.info = json.load(f)
        meta = np.load(os.path.join(path, "meta.npz"))
        self.meta = {k: meta[k] for k in meta.files}
        n, hs, ws = self.info["count"], *self.info["store_hw"]
        self.crops = np.memmap(os.path.join(path, "crops.u8"), dtype=np.uint8, mode="r", shape=(n, hs, ws, 3))
        self.path = path

    def __len__(self):
        return self.info["count"]

    @property
    def store_hw(self):
        return tuple(self.info["store_hw"])

    @property
    def skeleton(self):
        """The skeleton of the file the store was cut from (stores from before skeletons: by joint count)."""
        name = self.info.get("skeleton")
        return SKELETONS[name] if name else for_channels(self.meta["keypoints"].shape[1])


def store_path(root, split, input_hw, margin):
    return os.path.join(root, "stores", f"{split}_{input_hw[0]}x{input_hw[1]}_m{margin:g}")


CHUNK = 64  # images per unit of work: the unit of parallelism and of resumption


def decode_images(paths, device="cpu"):
    """RGB uint8 (3,H,W) tensors of image files, on `device`. TorchCodec decodes the JPEGs in one batched
    call (nvJPEG on CUDA), other formats one by one; a file it cannot decode (a CMYK JPEG, say) goes to PIL;
    a file neither reads is a DataError naming it."""
    raw = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                raw.append(f.read())
        except OSError as e:
            raise DataError(f"image {path} is missing or unreadable: {e.__class__.__name__}")
    encoded = [torch.frombuffer(bytearray(r), dtype=torch.uint8) for r in raw]
    jpeg = [i for i, r in enumerate(raw) if r[:2] == b"\xff\xd8"] if decode_jpeg is not None else []
    out = [None] * len(paths)
    if jpeg:
        try:
            for i, img in zip(jpeg, decode_jpeg([encoded[i] for i in jpeg], mode="RGB", device=device)):
                out[i] = img
        except RuntimeError:  # one bad file fails the batch: decode one by one below
            pass
    for i, path in enumerate(paths):
        if out[i] is None:
            out[i] = _decode_one(path, encoded[i]).to(device)
    return out


def _decode_one(path, encoded):
    try:
        if decode_image is not None:
            return decode_image(encoded, mode="RGB")
    except (RuntimeError, ValueError):
        pass
    try:
        with Image.open(path) as im:
            return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
    except (OSError, ValueError) as e:
        raise DataError(f"image {path} is missing or unreadable: {e.__class__.__name__}")


def _cut_chunk(args):
    """Decode the images of one chunk (batched) and cut their instances into the memmap (a worker's job;
    on a CUDA host without worker processes, decoding and warping run on the GPU)."""
    crops_path, shape, images, file_names, affines, starts, ends, device = args
    torch.set_num_threads(1)
    crops = np.memmap(crops_path, dtype=np.uint8, mode="r+", shape=shape)
    decoded = decode_images([os.path.join(images, f) for f in file_names], device)
    for img, a, b in zip(decoded, starts, ends):  # each image's instances in one warp
        img = img.float()[None].expand(b - a, -1, -1, -1)
        out = warp(img, torch.as_tensor(affines[a - starts[0]:b - starts[0]]).float().to(device), shape[1:3])
        crops[a:b] = out.round().clamp(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy()
    crops.flush()
    return True


def build(root, split, input_hw, margin, progress=False, workers=0, require_keypoints=True):
    """Build (or reuse) the crop store of one split; returns a CropStore.

    Work goes into `<store>.partial` in chunks of CHUNK images, each recorded in `done.npy` when written,
    so an interrupted build resumes where it stopped; `workers` > 0 decodes chunks in that many processes.
    One builder at a time (a file lock); the finished folder is renamed into place. A bad image or
    annotation file leaves nothing behind. require_keypoints=False admits instances without labeled
    joints (an unlabeled pool from detection boxes)."""
    path = store_path(root, split, input_hw, margin)
    if os.path.exists(os.path.join(path, "info.json")):
        return CropStore(path)
    ann_file = annotation_path(root, split)
    inst = person_instances(load_coco(ann_file), ann_file, require_keypoints)
    images = image_dir(root, split)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        with open(path + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # a second builder waits here, then finds the store done
            if not os.path.exists(os.path.join(path, "info.json")):
                _build_locked(path, inst, images, ann_file, input_hw, margin, progress, workers, split)
    except DataError:  # bad input: leave nothing behind (the stores folder too, if it held only this)
        with contextlib.suppress(OSError):
            os.remove(path + ".lock")
            os.rmdir(os.path.dirname(path))
        raise
    return CropStore(path)


def _build_locked(path, inst, images, ann_file, input_hw, margin, progress, workers, split):
    work = path + ".partial"
    shw = store_hw(input_hw, margin)
    n = len(inst["ann_id"])
    shape = (n, *shw, 3)
    os.makedirs(work, exist_ok=True)
    crops_path = os.path.join(work, "crops.u8")
    np.memmap(crops_path, dtype=np.uint8, mode="r+" if os.path.exists(crops_path) else "w+", shape=shape).flush()
    affines = crop_affines(inst["bbox"], input_hw, shw)
    starts = np.flatnonzero(np.r_[True, inst["image_id"][1:] != inst["image_id"][:-1]])
    ends = np.r_[starts[1:], n]
    chunks = [slice(c, c + CHUNK) for c in range(0, len(starts), CHUNK)]
    done_path = os.path.join(work, "done.npy")
    done = np.load(done_path) if os.path.exists(done_path) else np.zeros(len(chunks), dtype=bool)
    parallel = workers > 0 and len(chunks) - int(done.sum()) > 1
    device = "cuda" if torch.cuda.is_available() and not parallel else "cpu"  # worker processes stay on the CPU
    jobs = [(k, (crops_path, shape, images, inst["file_name"][starts[c]], affines[starts[c][0]:ends[c][-1]].numpy(),
                 starts[c], ends[c], device)) for k, c in enumerate(chunks) if not done[k]]
    bar = None
    if progress:
        bar = tqdm(total=len(chunks), initial=int(done.sum()), desc=f"crop store {split}", unit="chunk")
    try:
        if parallel:
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                for k, _ in zip([k for k, _ in jobs], pool.map(_cut_chunk, [j for _, j in jobs])):
                    done[k] = True
                    _save_done(done_path, done)
                    bar and bar.update(1)
        else:
            for k, job in jobs:
                _cut_chunk(job)
                done[k] = True
                _save_done(done_path, done)
                bar and bar.update(1)
    except DataError:  # bad input: nothing half-built stays behind
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        bar and bar.close()
    kp = inst["keypoints"].copy()
    kp[..., :2] = transform_points(affines, torch.as_tensor(kp[..., :2])).numpy()
    np.savez(os.path.join(work, "meta.npz"), image_id=inst["image_id"], ann_id=inst["ann_id"],
             bbox=inst["bbox"], area=inst["area"], keypoints=kp.astype(np.float32), score=inst["score"],
             head_size=inst["head_size"],
             crop=affines.numpy())
    os.remove(done_path)
    atomic_write_json(os.path.join(work, "info.json"), dict(
        count=n, store_hw=list(shw), input_hw=list(input_hw), margin=margin, split=split,
        annotations=os.path.abspath(ann_file), skeleton=inst["skeleton"].name))
    os.rename(work, path)


def _save_done(path, done):
    tmp = path + ".tmp.npy"
    np.save(tmp, done)
    os.replace(tmp, path)


class Pool:
    """A set of store rows ready on the device: uint8 crops and keypoints (in `skeleton`, the run's: a store of
    another skeleton has its keypoints carried over by joint name).

    Crops are uploaded once when they fit (`resident`); otherwise rows are gathered from the memory map:
    a training stream's batches ahead of time (collapse.data.read_ahead), other reads (evaluation,
    probes, pseudo-labels) when asked, moved as uint8."""

    def __init__(self, store, rows, device, resident_bytes=8 << 30, skeleton=None):
        self.store, self.rows, self.device = store, np.asarray(rows), device
        self.skeleton = skeleton or store.skeleton
        nbytes = len(self.rows) * int(np.prod(store.crops.shape[1:]))
        self.resident = nbytes <= resident_bytes
        if self.resident:
            self.crops = torch.from_numpy(np.ascontiguousarray(store.crops[self.rows])).to(device)
        self.keypoints = torch.as_tensor(self.skeleton.take(store.meta["keypoints"][self.rows], store.skeleton)).to(device)

    def __len__(self):
        return len(self.rows)

    def areas(self):
        """(N,) each instance's area (COCO `area`) in its stored crop's pixels: the OKS scale in that frame."""
        crop = torch.as_tensor(self.store.meta["crop"][self.rows]).float()
        return torch.as_tensor(self.store.meta["area"][self.rows]).float() * torch.linalg.det(crop[:, :2, :2])

    def fetch(self, idx):
        """idx: (B,) positions in this pool -> (uint8 crops (B,Hs,Ws,3), keypoints (B,J,3)) on the device."""
        if self.resident:
            crops = self.crops[idx.to(self.device)]
        else:
            host = torch.from_numpy(self.store.crops[self.rows[idx.cpu().numpy()]])  # the map is on the host
            if self.device.type == "cuda":
                host = host.pin_memory()
            crops = host.to(self.device, non_blocking=True)
        return crops, self.keypoints[idx.to(self.device)]
