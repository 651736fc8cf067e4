"""Running an engine: numpy in, numpy out, with torch owning the CUDA memory and the stream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nas2deploy.errors import ExportError, ShapeError, UnavailableError

from .build import trt_logger


class EngineRunner:
    """numpy in, numpy out: copy in, ``execute_async_v3`` on a torch CUDA stream, copy out,
    synchronise. Buffers are kept per input shape, so repeated calls allocate nothing."""

    def __init__(self, engine_path: Path, precision: str):
        import tensorrt as trt
        import torch

        self._torch, self._trt = torch, trt
        self.log = trt_logger(trt)
        self.runtime = trt.Runtime(self.log)
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            why = next(iter(reversed(self.log.messages)), "")
            raise UnavailableError(
                f"TensorRT {trt.__version__} could not load {engine_path.name} (built by another "
                f"TensorRT version or for another GPU? {why.splitlines()[0] if why else ''}); "
                f"rebuild it here with `nas2deploy build-engine {Path(engine_path).parent.parent}`")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        ins = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if n not in ins]
        if len(ins) != 1 or not outs:
            raise ExportError(f"{engine_path.name} has {len(ins)} inputs and {len(outs)} outputs; "
                              f"nas2deploy engines take one input")
        self.input_name, self.output_names = ins[0], outs
        self.input_dims = tuple(self.engine.get_tensor_shape(self.input_name))
        lo, _, hi = self.engine.get_tensor_profile_shape(self.input_name, 0)
        self.batch_range = (int(lo[0]), int(hi[0]))
        self.precision = precision
        self.stream = torch.cuda.Stream()
        self._shape: tuple[int, ...] | None = None
        self._buffers: dict[str, Any] = {}

    def _dtype(self, name: str):
        trt, torch = self._trt, self._torch
        table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
                 trt.int8: torch.int8, trt.bool: torch.bool}
        if hasattr(trt, "int64"):
            table[trt.int64] = torch.int64
        return table[self.engine.get_tensor_dtype(name)]

    def _bind(self, shape: tuple[int, ...]) -> None:
        torch = self._torch
        if not self.context.set_input_shape(self.input_name, shape):
            raise ShapeError(f"input shape {shape} is outside the engine's profile (batch "
                             f"{self.batch_range[0]}..{self.batch_range[1]})")
        bufs = {self.input_name: torch.empty(shape, dtype=self._dtype(self.input_name),
                                             device="cuda")}
        for name in self.output_names:
            out_shape = tuple(self.context.get_tensor_shape(name))
            bufs[name] = torch.empty(out_shape, dtype=self._dtype(name), device="cuda")
        for name, t in bufs.items():
            self.context.set_tensor_address(name, t.data_ptr())
        self._host_out = torch.empty(bufs[self.output_names[0]].shape,
                                     dtype=bufs[self.output_names[0]].dtype, pin_memory=True)
        self._buffers, self._shape = bufs, shape

    def _check(self, x: np.ndarray) -> None:
        expect = self.input_dims
        if x.ndim != len(expect) or any(d > 0 and d != s for d, s in zip(expect[1:], x.shape[1:])):
            raise ShapeError(f"input shape {tuple(x.shape)} does not fit the engine input "
                             f"{self.input_name}{list(expect)}")
        if not self.batch_range[0] <= x.shape[0] <= self.batch_range[1]:
            raise ShapeError(f"batch {x.shape[0]} is outside the engine's profile (batch "
                             f"{self.batch_range[0]}..{self.batch_range[1]}); rebuild with another "
                             f"target batch")

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise ExportError("TensorRT execute_async_v3 failed: "
                              + next(iter(reversed(self.log.messages)), "no message"))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape != self._shape:
            self._check(x)
            self._bind(tuple(x.shape))
        with torch.cuda.stream(self.stream):
            self._buffers[self.input_name].copy_(torch.from_numpy(x), non_blocking=True)
            self._enqueue()
            self._host_out.copy_(self._buffers[self.output_names[0]], non_blocking=True)
        self.stream.synchronize()
        return self._host_out.numpy().copy()

    def gpu_times_ms(self, x: np.ndarray, runs: int = 200, warmup: int = 20) -> list[float]:
        """GPU time of the engine alone (no copies), each run between two CUDA events."""
        torch = self._torch
        self(x)  # binds the shape and fills the input buffer
        times = []
        with torch.cuda.stream(self.stream):
            for i in range(warmup + runs):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record(self.stream)
                self._enqueue()
                end.record(self.stream)
                end.synchronize()
                if i >= warmup:
                    times.append(float(start.elapsed_time(end)))
        return times

    def details(self, x: np.ndarray) -> dict[str, Any]:
        """What the measurement record says about the runtime besides the wall-clock protocol."""
        gpu = sorted(self.gpu_times_ms(x))
        return {"tensorrt_version": str(self._trt.__version__), "engine_precision": self.precision,
                "gpu_compute_p50_ms": gpu[len(gpu) // 2],
                "gpu_compute_protocol": f"{len(gpu)} runs of execute_async_v3 alone between two "
                                        f"CUDA events, after 20 warm-up runs; median"}
