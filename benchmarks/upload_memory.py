"""How much memory a large upload costs the server: its peak resident memory before and after one.

A real ``python -m server`` (one model, tiny warm-up) is sent a multipart ``POST /v1/videos`` of ``--mb``
megabytes of zeros, streamed without a Content-Length, which it refuses as no video (415) once it has
read it all; the server's peak RSS (``VmHWM``) is read before and after. With ``--baseline`` another
checkout's server (``git worktree add --detach /tmp/base COMMIT``) is measured the same way in the same
run, with this interpreter, so the two lines compare the code alone.

    python benchmarks/upload_memory.py --mb 150
    python benchmarks/upload_memory.py --mb 150 --baseline /tmp/base
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.serving import free_port  # noqa: E402


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def measure(checkout: Path, weights: Path, mb: int) -> tuple[float, float, int]:
    port = free_port()
    env = dict(os.environ, STYLE_TRANSFER_WEIGHTS=str(weights), STYLE_TRANSFER_PORT=str(port),
               STYLE_TRANSFER_HOST="127.0.0.1", STYLE_TRANSFER_WARMUP_SIZE="16", PYTHONPATH=str(checkout))
    server = subprocess.Popen([sys.executable, "-m", "server"], cwd=checkout, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(base + "/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError(f"the server from {checkout} never got ready")
        before = peak_rss_mb(server.pid)

        def body():
            yield (b'--zz\r\nContent-Disposition: form-data; name="model"\r\n\r\nstarry-night\r\n--zz\r\n'
                   b'Content-Disposition: form-data; name="file"; filename="a.mp4"\r\nContent-Type: video/mp4\r\n\r\n')
            chunk = b"\0" * (1 << 20)
            for _ in range(mb):
                yield chunk
            yield b"\r\n--zz--\r\n"

        status = httpx.post(base + "/v1/videos", content=body(), timeout=300,
                            headers={"content-type": "multipart/form-data; boundary=zz"}).status_code
        return before, peak_rss_mb(server.pid), status
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=150, help="upload size, MiB (under the 200 MB video limit)")
    parser.add_argument("--baseline", type=Path, help="another checkout, measured in the same run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp)
        shutil.copy(ROOT / "weights" / "starry-night.safetensors", weights)
        checkouts = {"this": ROOT, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
        print(f"| checkout | peak RSS before, MB | after a {args.mb} MiB upload, MB | grew by, MB | status |")
        print("|---|---|---|---|---|")
        for name, checkout in checkouts.items():
            before, after, status = measure(checkout, weights, args.mb)
            print(f"| {name} | {before:.0f} | {after:.0f} | {after - before:.0f} | {status} |", flush=True)


if __name__ == "__main__":
    main()
