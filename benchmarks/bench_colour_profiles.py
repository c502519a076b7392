"""Decoding a photo with a colour profile, side by side with the same photo without one: what the
conversion to sRGB (style_transfer/imageio.py, "colour profiles") costs a request or a training step.

Contenders, alternating round by round (benchmarks/common.py), each ``decode_image`` of one JPEG (quality
90) to the float tensor the network takes:

* ``untagged``: no profile (read as sRGB, as before);
* ``sRGB-tagged``: sRGB's own profile attached (recognised by its primaries: no conversion);
* ``Display P3``: the same pixels with a Display P3 profile attached (a phone's photo): converted.

    python benchmarks/bench_colour_profiles.py --sizes 512,1024,2048 --repeats 30

The profiles are built here (no profile files ship): ``icc_with_primaries`` rewrites sRGB's profile's
primaries, which the tests use too.
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
from style_transfer.imageio import decode_image  # noqa: E402

# Display P3's primaries as an ICC profile stores them (XYZ, adapted to D50): the profile of phone photos.
DISPLAY_P3 = ((0.51512, 0.24119, -0.00105), (0.29198, 0.69225, 0.04189), (0.15710, 0.06657, 0.78407))


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def icc_with_primaries(primaries=DISPLAY_P3) -> bytes:
    """An ICC profile with sRGB's tone curves and white point and these (D50) primaries: sRGB's profile
    with its rXYZ, gXYZ and bXYZ tags rewritten."""
    data = bytearray(srgb_icc())
    tags = {}
    for i in range(struct.unpack(">I", data[128:132])[0]):
        sig, offset, _ = struct.unpack(">4sII", data[132 + 12 * i:144 + 12 * i])
        tags[sig] = offset
    for sig, xyz in zip((b"rXYZ", b"gXYZ", b"bXYZ"), primaries):
        # XYZType: 'XYZ ', 4 reserved bytes, then X, Y, Z as s15Fixed16 numbers.
        data[tags[sig] + 8:tags[sig] + 20] = struct.pack(">3i", *(round(v * 65536) for v in xyz))
    return bytes(data)


def tagged_jpeg(size: int, icc: bytes | None) -> bytes:
    img = sample_photo()[0].resize((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, **({"icc_profile": icc} if icc else {}))
    return buf.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="512,1024,2048", help="square JPEG sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    profiles = {"untagged": None, "sRGB-tagged": srgb_icc(), "Display P3": icc_with_primaries()}
    print(f"machine: {machine()}; photo {sample_photo()[1]}; decode_image, ms per image, median (min-max)")
    print(f"| size | {' | '.join(profiles)} | Display P3 extra, ms per Mpx |")
    print("|---|" + "---|" * (len(profiles) + 1))
    for size in map(int, args.sizes.split(",")):
        files = {name: tagged_jpeg(size, icc) for name, icc in profiles.items()}
        times = alternate({name: (lambda data=data: decode_image(data)) for name, data in files.items()},
                          args.repeats)
        extra = (min(times["Display P3"]) - min(times["untagged"])) * 1e3 / (size * size / 1e6)
        print(f"| {size} | {' | '.join(summary(times[name]) for name in profiles)} | {extra:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
