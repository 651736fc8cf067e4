"""Shared by the benchmark scripts: the machine line every result is quoted with."""

from __future__ import annotations

import datetime as dt

from nas2deploy.runtime import environment


def machine_line() -> str:
    env = environment()
    return (f"# {dt.date.today().isoformat()} | {env['cpu']} x{env['cpu_count']} | "
            f"torch {env['torch']} | onnxruntime {env['onnxruntime']} | openvino {env['openvino']}")
