"""Shared by the benchmark scripts: the machine line every result is quoted with."""

from __future__ import annotations

import datetime as dt

import nas2deploy.env as nd_env
from nas2deploy.env import cpu_name, cpuinfo, environment

# What decides the int8 kernels a CPU gets: without a VNNI flag, u8 x s8 pairs are summed with
# 16-bit saturation (VPMADDUBSW); AVX-512 doubles onnxruntime's channel block (8 -> 16).
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def machine_line() -> str:
    env = environment()
    return (f"# {dt.date.today().isoformat()} | {env['cpu']} x{env['cpu_count']} | "
            f"torch {env['torch']} | onnxruntime {env['onnxruntime']} | openvino {env['openvino']}")


def cpu_isa() -> dict[str, bool]:
    """Which of ``ISA_FLAGS`` the CPU reports (all False where /proc/cpuinfo is missing)."""
    return nd_env.cpu_isa(ISA_FLAGS)


def isa_line() -> str:
    """CPU model, vendor family/model (VMs often hide the marketing name) and the int8 ISA."""
    info, isa = cpuinfo(), cpu_isa()
    vnni = isa["avx512_vnni"] or isa["avx_vnni"] or isa["amx_int8"]
    ident = ", ".join(f"{k} {info[k]}" for k in ("vendor_id", "cpu family", "model")
                      if k in info)
    return (f"# cpu: {cpu_name()}" + (f" ({ident})" if ident else "") + " | "
            + " ".join(f"{k}={'yes' if v else 'no'}" for k, v in isa.items())
            + f" | int8 dot product: {'VNNI' if vnni else 'no VNNI (16-bit saturating pairs)'}")
