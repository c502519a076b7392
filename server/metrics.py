"""Prometheus metrics of one app instance (its own registry, so several apps can coexist in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """Requests by status, latency, queue depth, batch sizes, inference time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("style_transfer_requests_total", "HTTP requests", ["path", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("style_transfer_request_seconds", "HTTP request latency", ["path"],
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
                                 registry=self.registry)
        self.queue_depth = Gauge("style_transfer_queue_depth", "Inference jobs waiting", registry=self.registry)
        self.batch_size = Histogram("style_transfer_batch_size", "Images per inference batch",
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16), registry=self.registry)
        self.inference = Histogram("style_transfer_inference_seconds", "Device time per batch", ["model"],
                                   buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                                   registry=self.registry)
        self.video_jobs = Counter("style_transfer_video_jobs_total", "Video jobs by how they ended", ["status"],
                                  registry=self.registry)
        self.video_active = Gauge("style_transfer_video_jobs_active", "Video jobs queued or running", ["state"],
                                  registry=self.registry)
        self.video_frames = Counter("style_transfer_video_frames_total", "Video frames painted",
                                    registry=self.registry)
        self.rejected = Counter("style_transfer_rejected_total", "Jobs refused or expired", ["reason"],
                                registry=self.registry)
