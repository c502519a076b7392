"""Image files <-> float tensors. The only module that converts; everything else sees (B, 3, H, W) in [0, 1]."""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageCms, ImageOps, features

log = logging.getLogger(__name__)

# AVIF (what more and more phones and web pages save) is read where Pillow was built with libavif, as its
# wheels are from 11.3 on; an older Pillow reads the other three.
AVIF = features.check("avif")
# HEIC/HEIF (an iPhone's default format) is read where the optional pillow-heif plugin is installed
# (`pip install 'style-transfer[heif]'`): it brings libheif with its own HEVC decoder (libde265, LGPL; its
# wheels also hold the x265 encoder, GPL), so neither the base install nor the serving image depend on it.
try:
    import pillow_heif
except ImportError:  # the plugin is optional: HEIC files are refused with HEIF_HINT
    pillow_heif = None
else:
    pillow_heif.register_heif_opener()
HEIF = pillow_heif is not None
INPUT_FORMATS = ("PNG", "JPEG", "WEBP") + (("AVIF",) if AVIF else ()) + (("HEIF",) if HEIF else ())  # Pillow's


_PEOPLES_NAMES = {"WEBP": "WebP", "HEIF": "HEIC"}
# What a browser calls such files (a file picker's accept): an iPhone's HEIC photo is image/heic, HEIF the
# container's name (image/heif).
_MEDIA_TYPES = {"HEIF": ("image/heic", "image/heif")}


def format_name(fmt: str) -> str:
    """A Pillow format name as people know it: "WEBP" -> "WebP", "HEIF" -> "HEIC"."""
    return _PEOPLES_NAMES.get(fmt, fmt)


def format_names(formats: tuple[str, ...]) -> str:
    """Pillow's format names as people know them, for messages: "PNG, JPEG, WebP, AVIF, HEIC"."""
    return ", ".join(map(format_name, formats))


def media_types(formats: tuple[str, ...]) -> list[str]:
    """The media types of files in these formats: "image/png", ..., "image/heic", "image/heif"."""
    return [t for f in formats for t in _MEDIA_TYPES.get(f, (f"image/{f.lower()}",))]


INPUT_FORMAT_NAMES = format_names(INPUT_FORMATS)
HEIF_SUFFIXES = (".heic", ".heif")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp") + ((".avif",) if AVIF else ()) + (HEIF_SUFFIXES if HEIF else ())
# Video files (style_transfer/video.py): stylized when named, left out of a folder's images.
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")
OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


class ImageError(ValueError):
    """An input image cannot be used; subclasses say why."""


class UnsupportedImageFormat(ImageError):
    """Not one of the accepted formats (recognised by content, not by file name); ``hint`` says what to do
    when the format is known (an iPhone's HEIC photo), else it is empty."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(f"{message}. {hint}" if hint else message)
        self.hint = hint


# iPhones save HEIC by default. Pillow reads it only through a plugin with its own HEVC decoder (patent-
# encumbered), which this project depends on only as an option; without it such a file gets this hint
# instead of a bare 415.
HEIF_HINT = ("HEIC/HEIF photos (an iPhone's default format) are read only with the optional HEIC support "
             "(pip install 'style-transfer[heif]'); or export them as JPEG (on the iPhone: Settings > Camera > "
             "Formats > Most Compatible)")


class ImageTooLarge(ImageError):
    """More pixels than allowed (also catches decompression bombs before decoding)."""


class CorruptImage(ImageError):
    """Recognised, but truncated or otherwise undecodable."""


@dataclass
class LoadedImage:
    """An RGB image in [0, 1], shape (1, 3, H, W), and its alpha (1, 1, H, W) if it had one."""

    rgb: torch.Tensor
    alpha: torch.Tensor | None = None


# ----------------------------------------------------------------------------- colour profiles
#
# The network, the VGG loss and every painting were trained on sRGB pixels, and the outputs are written
# untagged, which every viewer shows as sRGB. A photo tagged with another ICC profile holds numbers in
# another colour space: a phone's Display P3 JPEG, a camera's Adobe RGB one. Read as sRGB they come out
# desaturated (Adobe RGB's green primary is far outside sRGB's), and the result no longer matches the
# photo the user sees in a colour-managed browser. So such pixels are converted to sRGB on decode, with
# the relative colorimetric intent that browsers use for images (out-of-gamut colours clip). The same
# holds for the other colour spaces a profile can describe: a CMYK JPEG from a print workflow (its profile
# says what each ink mix looks like on paper; without it, Pillow's plain inversion paints cyan as
# (0, 255, 255), far more saturated than ink) and a greyscale one (Photoshop tags those with a dot-gain
# profile). Without black point compensation, as browsers convert: a print's rich black stays the dark
# grey it is on paper. A profile that is sRGB's own (most tagged photos), unreadable, or of another colour
# space than the pixels leaves the pixels as they are: what an unmanaged viewer shows.

_SRGB_PRIMARY_TOLERANCE = 2e-3  # XYZ; different sRGB profiles' rounded colorants differ by ~1e-4


@functools.cache
def _srgb() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _is_srgb_matrix(profile) -> bool:
    """A matrix-shaper profile whose primaries are sRGB's (D50-adapted colorants, as ICC stores them)."""
    if not profile.is_matrix_shaper:
        return False
    reference = _srgb().profile
    for ours, theirs in ((profile.red_colorant, reference.red_colorant),
                         (profile.green_colorant, reference.green_colorant),
                         (profile.blue_colorant, reference.blue_colorant)):
        if ours is None or any(abs(a - b) > _SRGB_PRIMARY_TOLERANCE for a, b in zip(ours[0], theirs[0])):
            return False
    return True


_TRANSFORMS: OrderedDict[bytes, ImageCms.ImageCmsTransform | None] = OrderedDict()  # digest -> transform
_TRANSFORMS_KEPT = 32
_TRANSFORM_CACHED_BYTES = 1 << 20  # phones' and cameras' RGB profiles are 0.5-4 KB, calibrated LUT ones ~100 KB
_transforms_lock = threading.Lock()


def _to_srgb(icc: bytes) -> ImageCms.ImageCmsTransform | None:
    """The transform of an embedded ICC profile's RGB pixels to sRGB, built once per profile (uploads from
    one phone share one); None when the pixels are used as they are (see above)."""
    # A profile is whatever an upload carries (a JPEG's APP2 segments hold up to 16 MB), and a transform
    # keeps a copy of its profile: so the cache is keyed by a digest, and a profile over 1 MB is not kept.
    if len(icc) > _TRANSFORM_CACHED_BYTES:
        return _build_to_srgb(icc)
    key = hashlib.sha256(icc).digest()
    with _transforms_lock:
        if key in _TRANSFORMS:
            _TRANSFORMS.move_to_end(key)
            return _TRANSFORMS[key]
    transform = _build_to_srgb(icc)  # outside the lock: two threads may build one twice, harmlessly
    with _transforms_lock:
        _TRANSFORMS[key] = transform
        while len(_TRANSFORMS) > _TRANSFORMS_KEPT:
            _TRANSFORMS.popitem(last=False)
    return transform


# A profile's colour space -> the Pillow mode its transform reads ...
_TRANSFORM_MODE = {"RGB": "RGB", "CMYK": "CMYK", "GRAY": "L"}
# ... and the images' modes such a transform applies to (alpha set aside by _apply_profile; a palette
# expanded first by _to_float_array).
_APPLIES_TO = {"RGB": ("RGB", "RGBA", "RGBX", "P", "PA"), "CMYK": ("CMYK",), "L": ("L", "LA")}


def _build_to_srgb(icc: bytes) -> ImageCms.ImageCmsTransform | None:
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        space = profile.profile.xcolor_space.strip()
        if space not in _TRANSFORM_MODE or (space == "RGB" and _is_srgb_matrix(profile.profile)):
            return None
        # NOCACHE: LittleCMS's one-pixel cache lives in the transform and is not thread-safe; the server
        # decodes uploads on several threads with this one cached transform.
        return ImageCms.buildTransform(profile, _srgb(), _TRANSFORM_MODE[space], "RGB",
                                       renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
                                       flags=ImageCms.Flags.NOCACHE)
    except (OSError, ValueError, TypeError, ImageCms.PyCMSError) as exc:
        log.debug("ignoring an unusable ICC profile (%s): pixels taken as sRGB", exc)
        return None


# A HEIC (HEIF) file may describe its colours with an 'nclx' box (ITU-T H.273 codes: primaries, transfer,
# matrix) instead of an ICC profile; pillow-heif gives it as info["nclx_profile"], with the primaries' and
# white's xy. Primaries other than sRGB's (BT.709, code 1; 2 = unspecified), e.g. Display P3 (12), are
# converted like a profile's: an ICC profile with sRGB's tone curves and these primaries is made for them.
# Only with sRGB's tone curve (13; 2 = unspecified): another curve (BT.709's, or HDR's PQ and HLG) would
# need a tone mapping of its own, and such files are left as they are.
_NCLX_SRGB_PRIMARIES = (1, 2)
_NCLX_SRGB_TRANSFER = (2, 13)
_BRADFORD = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]])
_D50_XYZ = np.array([0.9642, 1.0, 0.8249])


def _xyz(x: float, y: float) -> np.ndarray:
    return np.array([x / y, 1.0, (1 - x - y) / y])


def colorants(primaries_xy, white_xy) -> np.ndarray:
    """The (3, 3) D50-adapted XYZ of an RGB space's red, green and blue (rows), as an ICC profile stores
    them, from the primaries' and white's CIE xy: the RGB -> XYZ matrix scaled so that RGB 1 is the white,
    then Bradford-adapted from that white to D50 (ICC.1:2010, annex E)."""
    white = _xyz(*white_xy)
    primaries = np.stack([_xyz(*xy) for xy in primaries_xy], axis=1)
    to_xyz = primaries * np.linalg.solve(primaries, white)
    adapt = np.linalg.inv(_BRADFORD) @ np.diag(_BRADFORD @ _D50_XYZ / (_BRADFORD @ white)) @ _BRADFORD
    return (adapt @ to_xyz).T


def profile_with_colorants(rgb_xyz) -> bytes:
    """An ICC profile with sRGB's tone curves and white point and these (D50) colorants, one row each for
    red, green and blue: sRGB's profile with its rXYZ, gXYZ and bXYZ tags rewritten."""
    data = bytearray(_srgb().tobytes())
    tags = {}
    for i in range(struct.unpack(">I", data[128:132])[0]):
        sig, offset, _ = struct.unpack(">4sII", data[132 + 12 * i:144 + 12 * i])
        tags[sig] = offset
    for sig, xyz in zip((b"rXYZ", b"gXYZ", b"bXYZ"), rgb_xyz):
        # XYZType: 'XYZ ', 4 reserved bytes, then X, Y, Z as s15Fixed16 numbers.
        data[tags[sig] + 8:tags[sig] + 20] = struct.pack(">3i", *(round(float(v) * 65536) for v in xyz))
    return bytes(data)


def _nclx_profile(nclx) -> bytes | None:
    """The ICC profile that stands for an nclx colour description (see above); None: read as sRGB."""
    if not isinstance(nclx, dict) or nclx.get("color_primaries") in _NCLX_SRGB_PRIMARIES:
        return None
    if nclx.get("transfer_characteristics") not in _NCLX_SRGB_TRANSFER:
        log.debug("an nclx tone curve other than sRGB's (%s): pixels taken as they are",
                  nclx.get("transfer_characteristics"))
        return None
    try:
        xy = [(float(nclx[f"color_primary_{c}_x"]), float(nclx[f"color_primary_{c}_y"]))
              for c in ("red", "green", "blue", "white")]
        return profile_with_colorants(colorants(xy[:3], xy[3]))
    except (KeyError, TypeError, ValueError, ZeroDivisionError, np.linalg.LinAlgError):
        return None


def colour_transform(img: Image.Image) -> ImageCms.ImageCmsTransform | None:
    """The conversion to sRGB that decode_image applies to ``img``'s pixels; None when there is none."""
    icc = img.info.get("icc_profile") or _nclx_profile(img.info.get("nclx_profile"))
    if not icc or not any(img.mode in modes for modes in _APPLIES_TO.values()):
        return None
    transform = _to_srgb(bytes(icc))
    if transform is None or img.mode not in _APPLIES_TO[transform.input_mode]:
        return None  # e.g. a CMYK profile on RGB pixels: a broken file, shown as an unmanaged viewer would
    return transform


def _apply_profile(img: Image.Image, to_srgb: ImageCms.ImageCmsTransform) -> Image.Image:
    """``img`` (a mode colour_transform accepted for ``to_srgb``, a palette expanded) in sRGB: RGB, or RGBA
    keeping its alpha."""
    alpha = img.getchannel("A") if img.mode in ("RGBA", "LA") else None
    converted = to_srgb.apply(img if img.mode == to_srgb.input_mode else img.convert(to_srgb.input_mode))
    if alpha is not None:
        converted.putalpha(alpha)
    return converted


def _to_float_array(img: Image.Image,
                    to_srgb: ImageCms.ImageCmsTransform | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Any PIL mode -> (H, W, 3) float32 RGB in [0, 1] and optional (H, W) alpha; ``to_srgb`` converts
    the colours (alpha is kept as it is)."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit greyscale (PIL's convert("RGB") would clip it at 255, turning it white).
        arr = np.asarray(img, dtype=np.float32)
        peak = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        grey = np.clip(arr / peak, 0.0, 1.0)
        return np.repeat(grey[..., None], 3, axis=2), None
    if mode == "F":
        grey = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
        return np.repeat(grey[..., None], 3, axis=2), None
    if mode in ("P", "PA"):  # a palette, expanded: its colours are RGB (a profile's too)
        img = img.convert("RGBA" if mode == "PA" or "transparency" in img.info else "RGB")
    if to_srgb is not None:
        img = _apply_profile(img, to_srgb)
    elif img.mode in ("LA", "La", "RGBa"):
        img = img.convert("RGBA")
    elif img.mode not in ("RGB", "RGBA"):
        img = img.convert("RGB")  # CMYK without a profile: Pillow's plain inversion (an unmanaged viewer's)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    if img.mode == "RGBA":
        rgb, alpha = arr[..., :3], arr[..., 3]
        # Transparent pixels often hold garbage colour: composite over white before stylizing.
        rgb = rgb * alpha[..., None] + (1.0 - alpha[..., None])
        return rgb, alpha
    return arr, None


def _open_checked(data: bytes | Path | str, formats: tuple[str, ...] | None,
                  max_pixels: int | None) -> Image.Image:
    """Open a file's header (no pixels decoded) and check its format and pixel count: the refusals that
    every decoder of an upload shares (decode_image, probe_image), so they answer alike."""
    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    if isinstance(data, (bytes, bytearray)) and not data:
        raise CorruptImage("the file is empty")
    try:
        img = Image.open(source, formats=list(formats) if formats else None)
    except Image.UnidentifiedImageError:
        brands = _iso_brands(data)
        for name, readable, known in (("AVIF", AVIF, _AVIF_BRANDS), ("HEIF", HEIF, _HEIF_BRANDS)):
            if readable and (formats is None or name in formats) and brands & known:
                # Pillow identifies an AVIF (HEIC) file only once libavif (libheif) has parsed all of its
                # boxes: a truncated one is unidentified, but it is a damaged AVIF (HEIC), 422 in the
                # server as a cut JPEG is, not another format (415).
                raise CorruptImage(f"cannot read the {name} data (truncated or damaged)") from None
        accepted = ", ".join(formats) if formats else "a format Pillow reads"
        raise UnsupportedImageFormat(f"not a recognised image (accepted: {accepted})",
                                     HEIF_HINT if brands & _HEIF_BRANDS else "") from None
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 -- a recognised header with broken data raises anything
        raise CorruptImage(f"cannot read the image header: {exc}") from None
    w, h = img.size
    if max_pixels is not None and w * h > max_pixels:
        img.close()
        raise ImageTooLarge(f"image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}")
    return img


_AVIF_BRANDS = {b"avif", b"avis"}
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"}


def _iso_brands(data: bytes | Path | str) -> set[bytes]:
    """The brands an ISO-BMFF file (AVIF, HEIC, MP4) names in its leading 'ftyp' box; empty for other files."""
    if isinstance(data, (bytes, bytearray)):
        head = bytes(data[:64])
    else:
        with open(data, "rb") as f:
            head = f.read(64)
    if head[4:8] != b"ftyp":
        return set()
    end = min(int.from_bytes(head[:4], "big"), len(head))
    # The major brand, then (after a 4-byte version) the compatible ones.
    return {head[8:12]} | {head[i:i + 4] for i in range(16, end - 3, 4)}


def decode_image(data: bytes | Path | str, formats: tuple[str, ...] | None = None,
                 max_pixels: int | None = None) -> LoadedImage:
    """Decode a file (path or bytes): first frame, EXIF orientation applied, any mode -> sRGB (+ alpha).

    ``formats`` limits the accepted formats (PIL names, e.g. ("PNG", "JPEG", "WEBP")); the format is
    recognised from the content. ``max_pixels`` is checked from the header, before any decoding.
    """
    with _open_checked(data, formats, max_pixels) as img:
        try:
            img.seek(0)  # animated images: the first frame
            img.load()
            to_srgb = colour_transform(img)
            img = ImageOps.exif_transpose(img) or img
            rgb, alpha = _to_float_array(img, to_srgb)
        except Image.DecompressionBombError as exc:
            raise ImageTooLarge(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 -- PIL's decoders raise many types on bad data
            raise CorruptImage(f"cannot decode the {img.format or 'image'} data: {exc}") from None
    rgb_t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).unsqueeze(0)
    alpha_t = None if alpha is None else torch.from_numpy(np.ascontiguousarray(alpha))[None, None]
    return LoadedImage(rgb_t, alpha_t)


def load_rgb(path: Path | str, max_size: int | None = None) -> torch.Tensor:
    """Load an image file as (1, 3, H, W) RGB in [0, 1], optionally with its long side <= max_size."""
    rgb = decode_image(path).rgb
    return resize_max(rgb, max_size) if max_size else rgb


# ----------------------------------------------------------------------------- JPEG on another decoder
#
# The server can hand JPEG uploads to torchvision's decoder on its device (nvJPEG on a GPU; issue 18) instead
# of Pillow. Everything a client can observe must stay the same: the header checks (format, pixel limit) are
# Pillow's either way (probe_image), only files whose decoding is known to match Pillow's go to torchvision
# (jpeg_refusal), and a file torchvision cannot decode is decoded by Pillow after all, so that an error is
# always Pillow's error.

EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the same pixel rearrangement as Pillow's ImageOps.exif_transpose, on (..., H, W)
# tensors: 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90
# counter-clockwise (torch.rot90 with k=1 turns the image counter-clockwise). Other values: unchanged, as in Pillow.
_ORIENT = {
    2: lambda x: x.flip(-1),
    3: lambda x: x.flip(-2, -1),
    4: lambda x: x.flip(-2),
    5: lambda x: x.transpose(-2, -1),
    6: lambda x: torch.rot90(x, -1, (-2, -1)),
    7: lambda x: x.transpose(-2, -1).flip(-2, -1),
    8: lambda x: torch.rot90(x, 1, (-2, -1)),
}
# Start-of-frame markers (JPEG, ITU T.81 table B.1): 0xC0 baseline, 0xC1 extended sequential, 0xC2
# progressive, 0xC3 lossless, 0xC5-0xC7 and 0xCD-0xCF hierarchical, 0xC9-0xCB arithmetic-coded.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
BASELINE = 0xC0


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says, read by Pillow without decoding its pixels (:func:`probe_image`)."""

    format: str  # Pillow's name: "JPEG", "PNG", "WEBP", "MPO", ...
    width: int  # as stored, before EXIF orientation
    height: int
    mode: str  # Pillow's mode: "RGB", "L", "CMYK", "RGBA", ...
    orientation: int | None  # EXIF orientation (1: none); None when the EXIF data cannot be read
    frame: int | None = None  # a JPEG's start-of-frame marker (BASELINE, ...); None for other formats
    adobe_transform: int | None = None  # a JPEG's Adobe APP14 colour transform (0: stored as RGB, not YCbCr)
    foreign_profile: bool = False  # an embedded ICC profile that decode_image converts to sRGB

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the decoded image, EXIF orientation applied (5 to 8 swap the sides)."""
        return (self.width, self.height) if self.orientation in (5, 6, 7, 8) else (self.height, self.width)


@dataclass
class EncodedJpeg:
    """A JPEG left undecoded for a decoder elsewhere (the server's device): its bytes and its checked header."""

    data: bytes
    header: ImageHeader


def probe_image(data: bytes, formats: tuple[str, ...] | None = None, max_pixels: int | None = None) -> ImageHeader:
    """The header of an image file, with decode_image's refusals for its format and pixel count (the same
    exception types and messages); pixels are not decoded, so a corrupt body is not noticed here."""
    with _open_checked(data, formats, max_pixels) as img:
        try:
            orientation = img.getexif().get(EXIF_ORIENTATION, 1)
        except Exception:  # noqa: BLE001 -- broken EXIF: decode_image will say what it says about it
            orientation = None
        if not isinstance(orientation, int):
            orientation = None
        is_jpeg = img.format == "JPEG"
        return ImageHeader(img.format or "", img.size[0], img.size[1], img.mode, orientation,
                           _jpeg_frame(data) if is_jpeg else None,
                           img.info.get("adobe_transform") if is_jpeg else None,
                           colour_transform(img) is not None)


def _jpeg_frame(data: bytes) -> int | None:
    """A JPEG's start-of-frame marker, from the marker segments before its first scan; None when they do
    not parse (a damaged file: Pillow decides what it is)."""
    i, n = 2, len(data)  # after SOI
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in _SOF_MARKERS:
            return marker
        elif marker in (0xDA, 0xD9):  # a scan or the end before any frame
            return None
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            i += 2
        else:
            i += 2 + (data[i + 2] << 8 | data[i + 3])
    return None


def jpeg_refusal(header: ImageHeader, data: bytes) -> str | None:
    """Why a file should be decoded by Pillow rather than torchvision's JPEG decoder; None when either will do.

    torchvision takes the common case only: a complete baseline JPEG, RGB (YCbCr-coded) or greyscale, with
    a readable EXIF orientation, and no colour profile to convert. Everything else is Pillow's, where its
    conventions (CMYK inversion, an Adobe RGB-coded file, colour management) are the reference, or where
    torchvision's GPU decoder would decode on the host, one file at a time (progressive files:
    torchvision's decode_jpegs_cuda sends only files its batched, hardware-capable decoder supports to it).
    A file that does not end with the end-of-image marker is Pillow's too: Pillow refuses a truncated file
    (422), and no other decoder may answer it with a picture.
    """
    if header.format != "JPEG":
        return f"{header.format or 'unknown'} file"  # PNG, WebP, and MPO (a multi-picture camera JPEG)
    if header.mode not in ("RGB", "L"):
        return f"{header.mode} JPEG"
    if header.orientation is None:
        return "unreadable EXIF orientation"
    if header.frame != BASELINE:
        return "not a baseline JPEG" if header.frame is not None else "unparsed JPEG markers"
    if header.adobe_transform == 0 and header.mode == "RGB":
        return "RGB-coded (Adobe) JPEG"
    if header.foreign_profile:
        return "colour profile other than sRGB (Pillow converts it)"
    if not data.endswith(b"\xff\xd9"):
        return "no end-of-image marker at the end (truncated, or trailing data)"
    return None


def orient(image: torch.Tensor, orientation: int | None) -> torch.Tensor:
    """``image`` (..., H, W) rearranged as Pillow's exif_transpose rearranges a file with this EXIF orientation."""
    turn = _ORIENT.get(orientation) if orientation is not None else None
    return turn(image) if turn is not None else image


def decode_jpegs(files: Sequence[bytes], orientations: Sequence[int | None],
                 device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """JPEG files decoded by torchvision on ``device``, each (1, 3, H, W) float32 in [0, 1] with its EXIF
    orientation applied: what decode_image gives for a file that :func:`jpeg_refusal` accepts.

    On the CPU torchvision and Pillow both use libjpeg-turbo and give identical pixels (tested). On a GPU
    this is nvJPEG, in one batched call (its hardware decoder where the GPU has one, e.g. A100/H100/H200),
    whose IDCT and chroma upsampling may differ from libjpeg's by a few levels. The result is ready for
    work queued on the caller's current stream. Raises RuntimeError when torchvision cannot decode one of
    the files.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    encoded = [torch.frombuffer(bytearray(f), dtype=torch.uint8) for f in files]
    if device.type == "cuda":
        # torchvision's nvJPEG decoder writes on a stream of its own into tensors it allocates on the current
        # stream, without waiting for that stream: memory the caching allocator hands out there could still
        # be in use by work queued on it (by any thread). So it decodes with a private stream as the current
        # one, whose memory only these decodes use; the caller's stream waits for it, and is recorded on the
        # frames so that their memory is not reused before the caller's work on them is done.
        current = torch.cuda.current_stream(device)
        private = _decode_stream(current.device_index)
        with torch.cuda.stream(private):
            decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
        current.wait_stream(private)
        for frame in decoded:
            frame.record_stream(current)
    else:
        decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB)
    # uint8 -> float32 by the same division as decode_image's (x / 255.0), on the device.
    return [orient(img, o).unsqueeze(0).float().div_(255.0) for img, o in zip(decoded, orientations)]


@functools.cache
def _decode_stream(index: int) -> torch.cuda.Stream:
    """The private CUDA stream of :func:`decode_jpegs` on GPU ``index`` (one per GPU: each stream has its
    own pool of cached memory)."""
    return torch.cuda.Stream(device=index)


def to_uint8(rgb: torch.Tensor) -> torch.Tensor:
    """Float in [0, 1] -> uint8, rounded half up, on the tensor's device: the quantization of to_pil."""
    return (rgb.detach().float().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8)


# nvJPEG's quality below the one asked for, so that its 4:4:4 files are about as large as libjpeg's 4:2:0
# ones at the quality asked for (encode_jpegs). Measured at 92, the server's quality.
NVJPEG_QUALITY_OFFSET = 8


def encode_jpegs(images: Sequence[LoadedImage], quality: int = 92) -> list[bytes]:
    """JPEG files of (1, 3, H, W) images, written by torchvision on the images' device; alpha composited
    over white, as encode_image does.

    On the CPU the bytes equal encode_image's (torchvision and Pillow use libjpeg-turbo with the same
    settings; tested). On a GPU this is nvJPEG, in one call for the list. nvJPEG writes 4:4:4 chroma
    where libjpeg writes 4:2:0, so at the same quality its files were 1.46x Pillow's (527 against
    360 KiB for a stylized 1024 px photo on an H200, 2026-12-04). It therefore encodes at ``quality -
    NVJPEG_QUALITY_OFFSET``: at 92 that is 84, which in a 4:4:4 re-encode on the CPU (the same IJG
    tables; its q92 files came within 1% of nvJPEG's) gave files of Pillow's size (357 against 362 KiB)
    1.5 dB closer to the painted pixels (docs/benchmarks.md, "JPEG size on a GPU").
    """
    from torchvision.io import encode_jpeg

    planes = [to_uint8(im.rgb if im.alpha is None else im.rgb * im.alpha + (1 - im.alpha))[0] for im in images]
    device = planes[0].device
    if device.type != "cuda":
        return [e.numpy().tobytes() for e in encode_jpeg(planes, quality=quality)]
    quality = max(1, quality - NVJPEG_QUALITY_OFFSET)
    # torchvision's nvJPEG encoder reads the pixels on a stream of its own, which waits for no other: they
    # must be complete before it starts. It then copies each file out on the legacy default stream into
    # memory allocated on the current stream: with the default stream current, those are one stream, and
    # .cpu() there is ordered after the copies.
    torch.cuda.current_stream(device).synchronize()
    with torch.cuda.stream(torch.cuda.default_stream(device)):
        return [e.cpu().numpy().tobytes() for e in encode_jpeg(planes, quality=quality)]


def fitted_size(height: int, width: int, max_size: int | None) -> tuple[int, int]:
    """(height, width) after :func:`resize_max`: the long side at most ``max_size``, aspect ratio kept."""
    if max_size is None or max(height, width) <= max_size:
        return height, width
    scale = max_size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_max(images: torch.Tensor, max_size: int) -> torch.Tensor:
    """Downscale so the long side is at most ``max_size`` (antialiased); never upscales."""
    h, w = images.shape[-2:]
    size = fitted_size(h, w, max_size)
    if size == (h, w):
        return images
    return torch.nn.functional.interpolate(images, size=size, mode="bicubic", antialias=True,
                                           align_corners=False).clamp(0, 1)


def to_pil(rgb: torch.Tensor, alpha: torch.Tensor | None = None) -> Image.Image:
    """(1, 3, H, W) or (3, H, W) float tensor -> PIL image (RGBA when alpha is given)."""
    if rgb.dim() == 4:
        rgb = rgb[0]
    arr = (rgb.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    if alpha is not None:
        a = alpha.reshape(alpha.shape[-2:]).detach().float().clamp(0, 1).cpu().numpy()
        img.putalpha(Image.fromarray((a * 255.0 + 0.5).astype(np.uint8), "L"))
    return img


def encode_image(rgb: torch.Tensor, fmt: str = "PNG", alpha: torch.Tensor | None = None,
                 quality: int = 92) -> bytes:
    """Encode to PNG/JPEG/WEBP bytes. Nothing from the input file (EXIF, ICC, text) is carried over."""
    fmt = fmt.upper()
    if fmt == "JPG":
        fmt = "JPEG"
    if fmt not in ("PNG", "JPEG", "WEBP"):
        raise ValueError(f"unsupported output format {fmt!r}; valid: png, jpeg, webp")
    if fmt == "JPEG" and alpha is not None:
        # JPEG has no alpha: composite over white, as the input was composited before stylizing.
        rgb = rgb * alpha + (1 - alpha)
        alpha = None
    buf = io.BytesIO()
    # PNG at zlib level 1: measured 6x faster than Pillow's default (21 vs 123 ms at 512 px) for files
    # ~12% larger -- encoding was a third of a request's time in the server.
    kwargs = {"quality": quality} if fmt in ("JPEG", "WEBP") else {"compress_level": 1}
    to_pil(rgb, alpha).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def save_image(rgb: torch.Tensor, path: Path | str, alpha: torch.Tensor | None = None, quality: int = 92) -> None:
    """Write an image file, format chosen by suffix, atomically (never a half-written file)."""
    path = Path(path)
    fmt = OUTPUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"unsupported output suffix {path.suffix!r}; valid: {', '.join(OUTPUT_FORMATS)}")
    atomic_write_bytes(path, encode_image(rgb, fmt, alpha, quality))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, rename: readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.{threading.get_ident()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def spread(items: list, count: int) -> list:
    """``count`` of ``items`` spread evenly over them, in order (all when there are not more)."""
    if len(items) <= count:
        return list(items)
    return [items[(i * len(items)) // count] for i in range(count)]


def find_images(folder: Path | str) -> list[Path]:
    """Every image (IMAGE_SUFFIXES) under ``folder`` (recursive, following symlinked folders once; hidden
    files and folders skipped), in sorted order. Without the optional HEIC support, HEIC/HEIF files are
    skipped with a warning that says how to make them usable (a phone's photo folder is full of them).
    Videos are left out, said in the log: a phone's folder holds clips too, each minutes of work, so a
    video is stylized only when named."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder: {folder}")
    found: list[Path] = []
    seen: set[str] = set()
    heif = videos = 0
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a symlink cycle, or the same folder linked twice
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        visible = [f for f in files if not f.startswith(".")]
        found += [Path(root) / f for f in visible if Path(f).suffix.lower() in IMAGE_SUFFIXES]
        heif += sum(Path(f).suffix.lower() in HEIF_SUFFIXES for f in visible) if not HEIF else 0
        videos += sum(Path(f).suffix.lower() in VIDEO_SUFFIXES for f in visible)
    if heif:
        log.warning("%d HEIC/HEIF file(s) under %s skipped. %s", heif, folder, HEIF_HINT)
    if videos:
        log.info("%d video file(s) under %s left out: a folder gives its images; name a video to stylize it",
                 videos, folder)
    return sorted(p for p in found if p.is_file())


def collect_images(paths: list[Path] | tuple[Path, ...], what: str = "input") -> list[Path]:
    """Image files named directly, and every image in the folders named (see find_images), in the given
    order; a path that does not exist is an error naming it as ``what``."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += find_images(path)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{what} not found: {path}")
    return files
