"""The server's image pipeline without HTTP: decode JPEG -> stylize on the device -> encode JPEG.

POST /v1/stylize minus the HTTP: the same calls (``decode_image`` with the server's accepted formats
and pixel limit, ``fit_image``, ``Stylizer.stylize_image``, ``encode_image``), the model loaded as the
server's worker loads it, with the server's settings (``STYLE_TRANSFER_*`` variables, read by
``server.settings.Settings``) and the request options its worker builds (``InferenceWorker.options``).
N threads share the device as the server's one inference worker does (one stylize at a time) while
decodes and encodes overlap, as in the server's thread pool; 1 thread is the plain serial loop. This is
the "raw pipeline" the server's throughput is held against (issue 18: >= 85% at 16 clients).

It also times the network alone at batch 1 on a device-resident input: ``network`` is the model's
forward pass as ``Stylizer.run`` calls it, ``run`` the whole ``Stylizer.run`` (with its fp16 overflow
check and clamp). On a GPU each call is bracketed by CUDA events (``gpu_ms``) and by a synchronize
(``wall_ms``, what a caller waits). Issue 18's goal: network at 1024x1024 <= 1.5 ms.

    python benchmarks/raw_pipeline.py --quick
    python benchmarks/raw_pipeline.py --sizes 512,1024 --threads 1,4,16 --seconds 5 --json raw.json
    python benchmarks/raw_pipeline.py --network-only --compile --sizes 1024 --json raw.json   # adds *_compiled
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, percentile, stats_ms, time_calls  # noqa: E402
from benchmarks.serving import photo_jpeg, sample_photo  # noqa: E402
from server.inference import InferenceWorker  # noqa: E402
from server.metrics import Metrics  # noqa: E402
from server.routes.stylize import ACCEPTED_FORMATS  # noqa: E402
from server.settings import Settings  # noqa: E402
from style_transfer.imageio import decode_image, encode_image  # noqa: E402
from style_transfer.stylize import Stylizer, StylizeOptions, fit_image  # noqa: E402
from style_transfer.zoo import list_models  # noqa: E402


def load(settings: Settings, model: str, compile: bool) -> tuple[Stylizer, StylizeOptions]:
    """``model`` loaded as the server's worker loads it, and the options it gives a plain request."""
    worker = InferenceWorker(settings, Metrics())  # not started: only its device choice and options
    models = list_models(Path(settings.weights))
    if model not in models:
        raise SystemExit(f"no model {model!r} in {settings.weights}; available: {', '.join(models) or 'none'}")
    stylizer = Stylizer.from_checkpoint(models[model], str(worker.device), settings.precision, settings.fast,
                                        compile)
    return stylizer, worker.options()


def time_network(stylizer: Stylizer, size: int, repeats: int, warmup: int) -> dict[str, dict]:
    """The network alone and ``Stylizer.run``, batch 1, ``size`` x ``size``, input already on the device."""
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size)).to(stylizer.device)

    @torch.no_grad()
    def network() -> None:
        with stylizer._kernels():  # the kernel settings Stylizer.run runs the network under
            stylizer.runner(x)

    return {"network": time_calls(network, stylizer.device, repeats, warmup),
            "run": time_calls(lambda: stylizer.run(x), stylizer.device, repeats, warmup)}


def time_pipeline(stylizer: Stylizer, options: StylizeOptions, settings: Settings, payload: bytes,
                  threads: int, seconds: float) -> dict:
    """``threads`` threads each looping decode -> stylize -> encode (JPEG) on ``payload`` for ``seconds``;
    stylize holds one lock, as the server's one inference worker runs one job at a time."""
    device_lock, record_lock = threading.Lock(), threading.Lock()
    stages: dict[str, list[float]] = {"decode": [], "wait": [], "stylize": [], "encode": [], "total": []}
    out_bytes: list[int] = []

    def one() -> None:
        t0 = time.perf_counter()
        image = fit_image(decode_image(payload, ACCEPTED_FORMATS, settings.max_pixels), options.max_size)
        t1 = time.perf_counter()
        with device_lock:
            t2 = time.perf_counter()
            out = stylizer.stylize_image(image, options)  # returns on the CPU: the device work is done
            t3 = time.perf_counter()
        data = encode_image(out.rgb, "JPEG", out.alpha)
        t4 = time.perf_counter()
        with record_lock:
            for name, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
                stages[name].append(dt)
            out_bytes.append(len(data))

    for _ in range(2):  # warm-up: cuDNN's autotuner times each new input shape once
        one()
    for samples in stages.values():
        samples.clear()
    out_bytes.clear()
    stop = time.monotonic() + seconds

    def loop() -> None:
        while time.monotonic() < stop:
            one()

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    start, cpu = time.monotonic(), time.process_time()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.monotonic() - start
    done = len(stages["total"])
    return {"threads": threads, "images": done, "elapsed_s": elapsed, "images_per_s": done / elapsed,
            "cpu_cores_busy": (time.process_time() - cpu) / elapsed,
            "output_bytes_mean": statistics.fmean(out_bytes) if out_bytes else None,
            "stages_ms": {name: stats_ms(samples) for name, samples in stages.items() if samples},
            "latency_p99_ms": percentile(stages["total"], 99) * 1e3 if done else None}


def write_merged(path: Path, results: dict) -> None:
    """Add ``results``' keys to the JSON object in ``path`` (created if absent), atomically."""
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged.update(results)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(merged, indent=1) + "\n")
    os.replace(tmp, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="starry-night", help="a model of the server's weights folder")
    parser.add_argument("--sizes", default="512,1024", help="square JPEG sizes, comma-separated")
    parser.add_argument("--threads", default="1,4,16", help="pipeline thread counts, comma-separated")
    parser.add_argument("--seconds", type=float, default=5, help="per pipeline configuration")
    parser.add_argument("--repeats", type=int, default=100, help="timed network calls per size")
    parser.add_argument("--warmup", type=int, default=10, help="untimed network calls per size first")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the network (the server's STYLE_TRANSFER_COMPILE); keys get _compiled")
    parser.add_argument("--network-only", action="store_true", help="skip the decode/stylize/encode pipeline")
    parser.add_argument("--json", type=Path, help="add the results to this JSON file (keys merged)")
    parser.add_argument("--quick", action="store_true", help="512 px, 1 and 4 threads, 2 s, 3 network calls")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.threads, args.seconds, args.repeats, args.warmup = "512", "1,4", 2, 3, 1
    sizes = [int(s) for s in args.sizes.split(",")]
    settings = Settings()
    compile = args.compile or settings.compile
    t0 = time.perf_counter()
    stylizer, options = load(settings, args.model, compile)
    suffix = "_compiled" if compile else ""
    config = {"model": args.model, "device": str(stylizer.device), "precision": stylizer.precision,
              "fast": stylizer.fast, "compile": compile, "load_s": time.perf_counter() - t0}
    print(f"machine: {machine()}")
    print(f"model {args.model} on {stylizer.device}, {stylizer.precision}, fast={stylizer.fast}, compile={compile}")
    results: dict = {"machine": machine(), "cpu_count": os.cpu_count()}

    network: dict = {"config": config, "sizes": {}}
    print("\n| size | network wall ms | network GPU ms | Stylizer.run wall ms | Stylizer.run GPU ms |"
          "\n|---|---|---|---|---|")
    for size in sizes:
        t1 = time.perf_counter()
        timing = time_network(stylizer, size, args.repeats, args.warmup)
        timing["seconds_incl_warmup"] = time.perf_counter() - t1  # compiling a new shape shows here
        network["sizes"][str(size)] = timing
        cells = [f"{timing[k][m]['median']:.3f}" if m in timing[k] else "-"
                 for k in ("network", "run") for m in ("wall_ms", "gpu_ms")]
        print(f"| {size} | {' | '.join(cells)} |", flush=True)
    results["network" + suffix] = network
    if args.json:  # written section by section: a run stopped later keeps what it measured
        write_merged(args.json, results)

    if not args.network_only:
        photo = sample_photo()[1]
        pipeline: dict = {"config": {**config, "photo": photo, "output": "JPEG"}, "sizes": {}}
        print("\n| size | threads | images/s | decode ms | stylize ms | encode ms | per image ms (p50 / p99) |"
              "\n|---|---|---|---|---|---|---|")
        for size in sizes:
            payload = photo_jpeg(size)
            runs = {}
            for threads in (int(t) for t in args.threads.split(",")):
                r = time_pipeline(stylizer, options, settings, payload, threads, args.seconds)
                runs[str(threads)] = r
                st = r["stages_ms"]
                print(f"| {size} | {threads} | {r['images_per_s']:.2f} | {st['decode']['median']:.1f} | "
                      f"{st['stylize']['median']:.1f} | {st['encode']['median']:.1f} | "
                      f"{st['total']['median']:.1f} / {r['latency_p99_ms']:.1f} |", flush=True)
            pipeline["sizes"][str(size)] = {"payload_bytes": len(payload), "threads": runs,
                                            "best_images_per_s": max(r["images_per_s"] for r in runs.values())}
            results["pipeline" + suffix] = pipeline
            if args.json:
                write_merged(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
