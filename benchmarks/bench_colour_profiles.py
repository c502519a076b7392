"""Decoding a photo with a colour profile, side by side with the same photo without one: what the
conversion to sRGB (style_transfer/imageio.py, "colour profiles") costs a request or a training step.

Contenders, alternating round by round (benchmarks/common.py), each ``decode_image`` of one JPEG (quality
90) to the float tensor the network takes:

* ``untagged``: no profile (read as sRGB, as before);
* ``sRGB-tagged``: sRGB's own profile attached (recognised by its primaries: no conversion);
* ``Display P3``: the same pixels with a Display P3 profile attached (a phone's photo): converted;
* ``CMYK``: the photo as a CMYK JPEG without a profile (Pillow's plain inversion);
* ``CMYK profiled``: the same CMYK JPEG with a press profile attached (``cmyk_icc``): converted through
  its CMYK -> Lab table. LittleCMS precomputes its own table for a transform, so a real press profile's
  larger table costs the same per pixel.

    python benchmarks/bench_colour_profiles.py --sizes 512,1024,2048 --repeats 30

The profiles are built here (no profile files ship): ``icc_with_primaries`` rewrites sRGB's profile's
primaries (``imageio.profile_with_colorants``, which HEIC files' nclx colours use too), ``cmyk_icc`` and
``grey_icc`` write whole small profiles; the tests use them too.
"""

from __future__ import annotations

import argparse
import io
import struct
import sys
from pathlib import Path

from PIL import Image, ImageCms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import alternate, machine, summary  # noqa: E402
from benchmarks.serving import sample_photo  # noqa: E402
from style_transfer.imageio import decode_image, profile_with_colorants  # noqa: E402

# Display P3's primaries as an ICC profile stores them (XYZ, adapted to D50): the profile of phone photos.
DISPLAY_P3 = ((0.51512, 0.24119, -0.00105), (0.29198, 0.69225, 0.04189), (0.15710, 0.06657, 0.78407))


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def icc_with_primaries(primaries=DISPLAY_P3) -> bytes:
    """An ICC profile with sRGB's tone curves and white point and these (D50) primaries."""
    return profile_with_colorants(primaries)


# The PCS white (D50) as an ICC profile's header and white point store it.
D50 = (0.9642, 1.0, 0.8249)


def _s15(values) -> bytes:
    return struct.pack(f">{len(values)}i", *(round(v * 65536) for v in values))


def _icc(device_class: bytes, colour_space: bytes, pcs: bytes, tags: dict[bytes, bytes]) -> bytes:
    """An ICC v2.1 profile (ICC.1:2001-04) holding these tags, each already encoded as its type, with a
    description and a D50 white point added."""
    name = b"built by benchmarks/bench_colour_profiles.py"
    tags = {b"desc": b"desc" + bytes(4) + struct.pack(">I", len(name) + 1) + name + bytes(1 + 4 + 4 + 2 + 1 + 67),
            b"wtpt": b"XYZ " + bytes(4) + _s15(D50), **tags}
    table_end = 128 + 4 + 12 * len(tags)
    entries, body = [], bytearray()
    for sig, data in tags.items():
        entries.append(struct.pack(">4sII", sig, table_end + len(body), len(data)))
        body += data + bytes(-len(data) % 4)
    header = struct.pack(">I4sI4s4s4s12s4s24s4s12s4s44s", table_end + len(body), bytes(4), 0x02100000,
                         device_class, colour_space, pcs, bytes(12), b"acsp", bytes(24), bytes(4), _s15(D50),
                         bytes(4), bytes(44))
    return header + struct.pack(">I", len(tags)) + b"".join(entries) + bytes(body)


def grey_icc(gamma: float = 1.0) -> bytes:
    """A greyscale profile whose tone curve is this power law (1.0: linear light, far from sRGB's ~2.2)."""
    curve = b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256))  # u8Fixed8 gamma
    return _icc(b"mntr", b"GRAY", b"XYZ ", {b"kTRC": curve})


def ink_lab(c: float, m: float, y: float, k: float) -> tuple[float, float, float]:
    """CIELAB (D50) of an ink mix on paper, a made-up press: paper is white, each ink darkens and tints."""
    lightness = 100 * (1 - 0.45 * c) * (1 - 0.5 * m) * (1 - 0.1 * y) * (1 - 0.85 * k)
    return lightness, (-37 * c + 74 * m - 6 * y) * (1 - k), (-50 * c - 3 * m + 95 * y) * (1 - k)


def cmyk_icc(lab=ink_lab) -> bytes:
    """A CMYK output profile whose A2B0 table (lut16Type, 2 grid points per ink: exact at the 16 pure ink
    mixes, interpolated between) gives ``lab(c, m, y, k)`` for inks in [0, 1]."""
    grid = []
    for c in (0, 1):  # the first input varies slowest
        for m in (0, 1):
            for y in (0, 1):
                for k in (0, 1):
                    lightness, a, b = lab(c, m, y, k)
                    # ICC v2's 16-bit Lab: L* 0-100 -> 0-0xFF00, a* and b* -128..127.996 -> 0-0xFFFF.
                    grid += [round(lightness * 0xFF00 / 100), round((a + 128) * 256), round((b + 128) * 256)]
    identity = struct.pack(">2H", 0, 0xFFFF)  # a 2-entry linear curve per channel
    table = (b"mft2" + bytes(4) + struct.pack(">4B", 4, 3, 2, 0) + _s15((1, 0, 0, 0, 1, 0, 0, 0, 1))
             + struct.pack(">2H", 2, 2) + identity * 4
             + struct.pack(f">{len(grid)}H", *(min(max(v, 0), 0xFFFF) for v in grid)) + identity * 3)
    return _icc(b"prtr", b"CMYK", b"Lab ", {b"A2B0": table})


def tagged_jpeg(size: int, icc: bytes | None, mode: str = "RGB") -> bytes:
    img = sample_photo()[0].resize((size, size), Image.Resampling.LANCZOS).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, **({"icc_profile": icc} if icc else {}))
    return buf.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="512,1024,2048", help="square JPEG sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    profiles = {"untagged": (None, "RGB"), "sRGB-tagged": (srgb_icc(), "RGB"),
                "Display P3": (icc_with_primaries(), "RGB"), "CMYK": (None, "CMYK"),
                "CMYK profiled": (cmyk_icc(), "CMYK")}
    print(f"machine: {machine()}; photo {sample_photo()[1]}; decode_image, ms per image, median (min-max)")
    print(f"| size | {' | '.join(profiles)} | extra ms per Mpx: Display P3, CMYK profiled |")
    print("|---|" + "---|" * (len(profiles) + 1))
    for size in map(int, args.sizes.split(",")):
        files = {name: tagged_jpeg(size, icc, mode) for name, (icc, mode) in profiles.items()}
        times = alternate({name: (lambda data=data: decode_image(data)) for name, data in files.items()},
                          args.repeats)
        mpx = size * size / 1e6
        extra = [(min(times[name]) - min(times[base])) * 1e3 / mpx
                 for name, base in (("Display P3", "untagged"), ("CMYK profiled", "CMYK"))]
        print(f"| {size} | {' | '.join(summary(times[name]) for name in profiles)} | "
              f"{extra[0]:.1f}, {extra[1]:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
