"""Prometheus metrics of the server (``flexavatar serve --metrics-port 9400`` -> http://host:9400/metrics).

    flexrt_frames_received_total          frames parsed from clients
    flexrt_frames_rendered_total          frames sent back
    flexrt_frames_dropped_total           frames replaced by a newer one of the same stream (latest wins)
    flexrt_jpeg_cpu_fallback_total        GPU-JPEG frames too large for the encoder's capacity, encoded on the CPU
    flexrt_frame_latency_seconds{stage}   per frame: queue (received -> batch submitted), decode and render (GPU
                                          time of its batch), server (received -> response handed to gRPC)
    flexrt_batch_size                     frames per batch
    flexrt_active_streams                 open Animate streams
    flexrt_gpu_memory_bytes{kind}         torch's allocated / reserved CUDA memory (sampled at scrape time)
    flexrt_gc_pause_seconds{generation}   Python garbage-collector pauses (runtime/gc_pauses.py; every thread
                                          stops while one runs)

Each server has its own registry, so several servers in one process (tests) do not collide.
"""
from __future__ import annotations

import torch

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.012, 0.016, 0.024, 0.033, 0.05, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128)


def gpu_memory_summary(device: torch.device) -> str | None:
    """One line on where the device's memory is, for the server's start-up log (None off CUDA): torch's allocated /
    reserved bytes (its caching allocator, CUDA-graph pools included), CuPy's default pool when CuPy is loaded, and
    the device's total in use by every process (cudaMemGetInfo)."""
    if device.type != "cuda":
        return None
    gib = 1 << 30
    free, total = torch.cuda.mem_get_info(device)
    parts = [f"torch allocated {torch.cuda.memory_allocated(device) / gib:.1f} GiB, reserved "
             f"{torch.cuda.memory_reserved(device) / gib:.1f} GiB"]
    import sys

    cp = sys.modules.get("cupy")  # only when something already loaded it
    if cp is not None:
        with cp.cuda.Device(device.index or 0):
            pool = cp.get_default_memory_pool()
            parts.append(f"CuPy pool used {pool.used_bytes() / gib:.1f} GiB, "
                         f"held {pool.total_bytes() / gib:.1f} GiB")
    parts.append(f"device in use (all processes) {(total - free) / gib:.1f} of {total / gib:.1f} GiB")
    return "GPU memory: " + "; ".join(parts)


class ServerMetrics:
    def __init__(self, active_streams, dropped_frames, jpeg_fallbacks, device: torch.device,
                 engine_info: dict | None = None):
        """``active_streams``, ``dropped_frames``, ``jpeg_fallbacks``: () -> current value (read at scrape time).
        ``engine_info``: labels of ``flexrt_engine_info`` (backend, device, precision, rasterizer, jpeg): which
        decoder and precision this replica runs (e.g. "bf16+fp8-static+bf16-residual"), to tell replicas apart."""
        try:
            import prometheus_client as prom
        except ImportError:
            raise RuntimeError("--metrics-port needs the prometheus-client package (pip install prometheus-client)") \
                from None
        self.prom = prom
        self.registry = reg = prom.CollectorRegistry(auto_describe=True)
        self.received = prom.Counter("flexrt_frames_received", "frames parsed from clients", registry=reg)
        self.rendered = prom.Counter("flexrt_frames_rendered", "frames sent back to clients", registry=reg)
        self.latency = prom.Histogram("flexrt_frame_latency_seconds", "per-frame latency by stage", ["stage"],
                                      buckets=LATENCY_BUCKETS, registry=reg)
        self.batch_size = prom.Histogram("flexrt_batch_size", "frames per batch", buckets=BATCH_BUCKETS, registry=reg)
        prom.Gauge("flexrt_active_streams", "open Animate streams", registry=reg).set_function(active_streams)
        if engine_info:
            prom.Info("flexrt_engine", "the engine this server runs", registry=reg).info(
                {k: str(v) for k, v in engine_info.items()})
        reg.register(_Counters(prom, {
            "flexrt_frames_dropped": ("frames replaced by a newer one of the same stream (latest wins)", dropped_frames),
            "flexrt_jpeg_cpu_fallback": ("GPU-JPEG frames too large for the capacity, encoded on the CPU",
                                         jpeg_fallbacks)}))
        from .gc_pauses import GcPauseRecorder

        self.gc_pauses = GcPauseRecorder().install()
        reg.register(_GcPauses(self.gc_pauses))
        if device.type == "cuda":
            mem = prom.Gauge("flexrt_gpu_memory_bytes", "CUDA memory held by torch", ["kind"], registry=reg)
            mem.labels("allocated").set_function(lambda: torch.cuda.memory_allocated(device))
            mem.labels("reserved").set_function(lambda: torch.cuda.memory_reserved(device))
        self._server = None

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Start the /metrics HTTP endpoint on a daemon thread -> the bound port."""
        server, _thread = self.prom.start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        return server.server_port

    def stop(self) -> None:
        self.gc_pauses.remove()
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    # ---- called by the service (event-loop thread) ----
    def frame(self, rendered, server_us: int) -> None:
        self.rendered.inc()
        self.latency.labels("queue").observe(rendered.queue_us / 1e6)
        self.latency.labels("decode").observe(rendered.decode_us / 1e6)
        self.latency.labels("render").observe(rendered.render_us / 1e6)
        self.latency.labels("server").observe(server_us / 1e6)

    def batch(self, result) -> None:
        self.batch_size.observe(result.batch_size)


class _Counters:
    """Counters whose values live elsewhere (the sessions, the renderer), read when Prometheus scrapes."""

    def __init__(self, prom, counters: dict):
        self.prom, self.counters = prom, counters

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        for name, (doc, value) in self.counters.items():
            yield CounterMetricFamily(name, doc, value=float(value()))

    def describe(self):
        return []


class _GcPauses:
    """flexrt_gc_pause_seconds{generation}: the recorder's histograms, copied when Prometheus scrapes."""

    def __init__(self, recorder):
        self.recorder = recorder

    def collect(self):
        from prometheus_client.core import HistogramMetricFamily

        family = HistogramMetricFamily("flexrt_gc_pause_seconds", "Python garbage-collector pauses",
                                       labels=["generation"])
        for gen in range(3):
            buckets, total = self.recorder.snapshot(gen)
            family.add_metric([str(gen)], buckets, total)
        yield family

    def describe(self):
        return []
