"""One image (or mask) of a site's folder, read through MONAI and prepared as its spec says.

Readers: PNG/JPEG/BMP through ``PILReader`` (rows first, as the image is displayed), NIfTI
``.nii``/``.nii.gz`` through ``NibabelReader``, DICOM (a ``.dcm`` file, or a folder holding
one series of slices) through ``PydicomReader`` (rows first too). Then MONAI transforms:
``EnsureChannelFirst`` (in ``LoadImage``), ``Resize`` to the spec's size, and ``ScaleIntensity``
(or ``ScaleIntensityRange`` for a fixed window) to [0, 1].
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from fedshield.data.spec import DataSpec
from fedshield.errors import DataError

__all__ = ["ImageLoader", "image_format"]

_PIL = (".png", ".jpg", ".jpeg", ".bmp")
_NIFTI = (".nii", ".nii.gz")


def image_format(path: Path) -> str:
    """``pil``, ``nifti`` or ``dicom``: the reader ``path`` needs, from its suffix (a folder
    is a DICOM series).

    Raises:
        DataError: naming ``path``, for any other suffix.
    """
    name = path.name.lower()
    if path.is_dir() or name.endswith(".dcm"):
        return "dicom"
    if name.endswith(_NIFTI):
        return "nifti"
    if name.endswith(_PIL):
        return "pil"
    raise DataError(
        f"{path}: unknown image format; use PNG/JPEG/BMP, NIfTI (.nii, .nii.gz), DICOM (.dcm) "
        "or a folder of one DICOM series"
    )


class ImageLoader:
    """Reads and prepares a site's images and masks as ``spec`` says: images ``(C, H, W)``
    float32 in [0, 1], masks ``(1, H, W)`` int64 class indices.

    Without a ``size`` in the spec, every image must have the first one's shape: the loader
    remembers it.
    """

    def __init__(self, spec: DataSpec) -> None:
        from monai.data import NibabelReader, PILReader, PydicomReader
        from monai.transforms import Compose, Resize, ScaleIntensity, ScaleIntensityRange

        self._readers = {
            "pil": PILReader(reverse_indexing=False, converter=self._shown_levels),
            "nifti": NibabelReader(),
            "dicom": PydicomReader(swap_ij=False),
        }
        if spec.intensity == "minmax":
            scale = ScaleIntensity(minv=0.0, maxv=1.0)
        else:
            low, high = spec.intensity
            scale = ScaleIntensityRange(low, high, 0.0, 1.0, clip=True)
        steps = [] if spec.size is None else [Resize(spec.size, mode="area")]
        self._image = Compose([*steps, scale])
        self._mask = Compose([] if spec.size is None else [Resize(spec.size, mode="nearest")])
        self._mask_pil = PILReader(reverse_indexing=False)  # a palette mask's indices: classes
        self.spec = spec
        self._first: tuple[tuple[int, ...], Path] | None = None

    def image(self, path: Path) -> np.ndarray:
        """The image at ``path``, prepared: ``(channels, H, W)`` float32 in [0, 1].

        Raises:
            DataError: naming ``path``: unreadable or corrupt, not finite, another channel
                count than the spec's, a 3-D volume the spec does not slice, or (no ``size``)
                another shape than the first image's.
        """
        return self._prepare(path, self._read(path))

    def pair(self, image: Path, mask: Path) -> tuple[np.ndarray, np.ndarray]:
        """The image at ``image`` (as :meth:`image`) and its mask at ``mask``, prepared:
        ``(1, H, W)`` int64 class indices, resized by nearest neighbour.

        Raises:
            DataError: naming the file: as :meth:`image`; a mask with more than one channel,
                another shape than its image's, or a value that is not a class index.
        """
        raw_image = self._read(image)
        raw = self._read(mask, mask=True)
        if raw.shape[0] != 1 or raw.shape[1:] != raw_image.shape[1:]:
            raise DataError(
                f"{mask}: mask of shape {raw.shape} for image {image} of (H, W) "
                f"{raw_image.shape[1:]}; a mask has one channel and its image's height and width"
            )
        values = np.unique(raw)
        classes = len(self.spec.classes)
        bad = values[(values != np.round(values)) | (values < 0) | (values >= classes)]
        if bad.size:
            shown = ", ".join(f"{v:g}" for v in bad[:5])
            raise DataError(
                f"{mask}: mask values {shown} are not class indices 0..{classes - 1} "
                f"({', '.join(self.spec.classes)}); save the mask with those indices (e.g. 255 "
                "→ 1)"
            )
        return self._prepare(image, raw_image), _numpy(self._mask(raw), np.int64)

    def _prepare(self, path: Path, raw: np.ndarray) -> np.ndarray:
        if raw.shape[0] != self.spec.channels:
            raise DataError(
                f"{path}: {raw.shape[0]} channel(s), but the spec says channels: "
                f"{self.spec.channels} (1 grayscale, 3 RGB); convert the image or fix channels"
            )
        if self.spec.size is None:
            if self._first is None:
                self._first = (raw.shape, path)
            elif raw.shape != self._first[0]:
                shape, first = self._first
                raise DataError(
                    f"{path}: shape {raw.shape[1:]} differs from {first}'s {shape[1:]}; give "
                    "the spec a size: [height, width] to resize every image"
                )
        return _numpy(self._image(raw), np.float32)

    def _shown_levels(self, image):
        """A PIL image as the levels it shows: a palette image's indices become its palette's
        colours (PNG optimisers store grey images so, in any index order), one grey channel
        when the spec has one channel and every colour is grey."""
        if image.mode not in ("P", "PA"):
            return image
        alpha = image.mode == "PA" or "transparency" in image.info
        rgb = image.convert("RGBA" if alpha else "RGB")
        pixels = np.asarray(rgb)
        grey = (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
        if self.spec.channels == 1 and grey:
            return rgb.convert("LA" if alpha else "L")
        return rgb

    def _read(self, path: Path, *, mask: bool = False) -> np.ndarray:
        """``path``'s pixels as ``(C, H, W)`` float32, a volume sliced as the spec says."""
        kind = image_format(path)
        reader = self._mask_pil if mask and kind == "pil" else self._readers[kind]
        try:
            raw = _numpy(_load_image()(str(path), reader=reader), np.float32)
        except Exception as exc:  # any reader's failure: PIL, nibabel, pydicom, MONAI
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise DataError(
                f"{path}: cannot read it as {kind} ({type(exc).__name__}: {reason}); replace "
                "or remove the file"
            ) from exc
        if kind == "dicom" and path.is_dir():
            _check_series(path)
        if raw.ndim == 4 and raw.shape[3] == 1:
            raw = raw[..., 0]
        elif raw.ndim == 4 and self.spec.volumes == "middle-slice":
            raw = np.ascontiguousarray(raw[..., raw.shape[3] // 2])
        elif raw.ndim == 4:
            raise DataError(
                f"{path}: a 3-D volume of shape {raw.shape[1:]}; the models are 2-D: set "
                "volumes: middle-slice in the spec (each volume's middle slice along its last "
                "axis) or export 2-D slices"
            )
        if raw.ndim != 3:
            raise DataError(f"{path}: {raw.ndim - 1}-D pixels {raw.shape[1:]}; expected 2-D")
        if not np.isfinite(raw).all():
            raise DataError(f"{path}: NaN or infinite pixel values; fix or remove the file")
        return raw


def _check_series(folder: Path) -> None:
    """Refuse a DICOM folder the reader would stack wrongly: more than one series (say a
    localizer beside the axial series), or one ``InstanceNumber`` on two slices."""
    import pydicom
    from pydicom.misc import is_dicom

    uids, numbers = set(), []
    for file in sorted(f for f in folder.iterdir() if f.is_file() and is_dicom(f)):
        tags = ["SeriesInstanceUID", "InstanceNumber"]
        ds = pydicom.dcmread(file, stop_before_pixels=True, specific_tags=tags)
        uids.add(str(ds.get("SeriesInstanceUID", "")))
        numbers.append(ds.get("InstanceNumber"))
    if len(uids) > 1:
        raise DataError(
            f"{folder}: {len(uids)} DICOM series ({', '.join(sorted(uids))}) in one folder; "
            "a folder holds one series: move the others out"
        )
    twice = sorted({n for n in numbers if n is not None and numbers.count(n) > 1})
    if twice:
        raise DataError(
            f"{folder}: InstanceNumber {twice[0]} twice; the slices' order is ambiguous: keep "
            "one acquisition per folder"
        )


@functools.cache
def _load_image():
    """One MONAI ``LoadImage`` (channel first, float32) for the process; each call names its
    reader. Building it registers every default reader, among them the GPU DICOM decoder's,
    whose "not available" notices are silenced: the CPU pydicom reader is the one used."""
    import logging
    import warnings

    from monai.transforms import LoadImage

    plugin = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = plugin.level
    plugin.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")
            return LoadImage(image_only=True, ensure_channel_first=True, dtype=np.float32)
    finally:
        plugin.setLevel(level)


def _numpy(array, dtype) -> np.ndarray:
    """A MONAI output (``MetaTensor``, tensor or array) as a plain numpy array of ``dtype``."""
    from monai.utils import convert_to_numpy

    return np.ascontiguousarray(convert_to_numpy(array), dtype=dtype)
