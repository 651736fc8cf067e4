"""The op vocabulary every materialized network is built from.

These are the only module classes a materialized subnet contains besides torch's own, so a
bundle rebuilds with nas2deploy installed and nothing else: no supernet, no method classes, no
masks. Each op is built from a plain dict and reports that dict back from its *current* tensor
shapes (``spec()``), so channel surgery (torch-pruning) on a built net can be written back into
the architecture JSON without a separate bookkeeping path.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

ACTS = ("relu", "relu6", "hswish", "none")


def make_act(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=False)
    if name == "relu6":
        return nn.ReLU6(inplace=False)
    if name == "hswish":
        return nn.Hardswish()
    if name == "none":
        return nn.Identity()
    raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTS)}")


class Conv(nn.Module):
    """k×k conv → BN → act (BN and act optional)."""

    op = "conv"

    def __init__(self, c_in: int, c_out: int, k: int = 3, stride: int = 1, groups: int = 1,
                 bn: bool = True, act: str = "relu"):
        super().__init__()
        self.k, self.stride, self.act_name, self.has_bn = k, stride, act, bn
        self.conv = nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=not bn)
        self.bn = nn.BatchNorm2d(c_out) if bn else nn.Identity()
        self.act = make_act(act)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))

    def spec(self) -> dict[str, Any]:
        w = self.conv.weight
        return {"c_in": w.shape[1] * self.conv.groups, "c_out": w.shape[0], "k": self.k,
                "stride": self.stride, "groups": self.conv.groups, "bn": self.has_bn,
                "act": self.act_name}


class SepConv(nn.Module):
    """Separable conv as in DSO-NAS: depthwise k×k → pointwise 1×1 → BN → act."""

    op = "sep"

    def __init__(self, c_in: int, c_out: int, k: int = 3, stride: int = 1, act: str = "relu"):
        super().__init__()
        self.k, self.stride, self.act_name = k, stride, act
        self.dw = nn.Conv2d(c_in, c_in, k, stride, k // 2, groups=c_in, bias=False)
        self.pw = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = make_act(act)

    def forward(self, x):
        return self.act(self.bn(self.pw(self.dw(x))))

    def spec(self) -> dict[str, Any]:
        return {"c_in": self.dw.weight.shape[0], "c_out": self.pw.weight.shape[0], "k": self.k,
                "stride": self.stride, "act": self.act_name}


class Pool(nn.Module):
    """3×3 max or avg pool → BN → act (channels unchanged)."""

    op = "pool"

    def __init__(self, c: int, kind: str = "max", k: int = 3, stride: int = 1, act: str = "relu"):
        super().__init__()
        if kind not in ("max", "avg"):
            raise ValueError(f"pool kind must be 'max' or 'avg', not {kind!r}")
        self.kind, self.k, self.stride, self.act_name = kind, k, stride, act
        if kind == "max":
            self.pool = nn.MaxPool2d(k, stride, k // 2)
        else:
            self.pool = nn.AvgPool2d(k, stride, k // 2, count_include_pad=False)
        self.bn = nn.BatchNorm2d(c)
        self.act = make_act(act)

    def forward(self, x):
        return self.act(self.bn(self.pool(x)))

    def spec(self) -> dict[str, Any]:
        return {"c": self.bn.num_features, "kind": self.kind, "k": self.k, "stride": self.stride,
                "act": self.act_name}


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, c_red: int):
        super().__init__()
        self.reduce = nn.Conv2d(c, c_red, 1)
        self.expand = nn.Conv2d(c_red, c, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(torch.relu(self.reduce(s))))


class MBConv(nn.Module):
    """Inverted residual: [1×1 expand → BN → act] → dw k×k → BN → act → [SE] → 1×1 project → BN.

    The residual is added when stride is 1 and c_in == c_out. ``mid`` is the expanded width (the
    channel count width-searching methods shrink); with ``expand=False`` mid must equal c_in.
    """

    op = "mbconv"

    def __init__(self, c_in: int, c_out: int, mid: int, k: int = 3, stride: int = 1,
                 expand: bool = True, se: int = 0, act: str = "relu6"):
        super().__init__()
        if not expand and mid != c_in:
            raise ValueError(f"mbconv without expansion needs mid == c_in ({mid} != {c_in})")
        self.k, self.stride, self.act_name, self.has_expand = k, stride, act, expand
        self.residual = stride == 1 and c_in == c_out
        self.expand = (nn.Sequential(nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid),
                                     make_act(act)) if expand else nn.Identity())
        self.dw = nn.Sequential(nn.Conv2d(mid, mid, k, stride, k // 2, groups=mid, bias=False),
                                nn.BatchNorm2d(mid), make_act(act))
        self.se = SqueezeExcite(mid, se) if se else nn.Identity()
        self.project = nn.Sequential(nn.Conv2d(mid, c_out, 1, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + y if self.residual else y

    def spec(self) -> dict[str, Any]:
        dw = self.dw[0].weight
        se = self.se.reduce.weight.shape[0] if isinstance(self.se, SqueezeExcite) else 0
        c_in = self.expand[0].weight.shape[1] if self.has_expand else dw.shape[0]
        return {"c_in": c_in, "c_out": self.project[0].weight.shape[0], "mid": dw.shape[0],
                "k": self.k, "stride": self.stride, "expand": self.has_expand, "se": se,
                "act": self.act_name}


class Sum(nn.Module):
    """Sum of the inputs, each optionally scaled by a constant coefficient.

    ``drop_path`` (ScheduledDropPath, Zoph et al. 2018): per input, the drop probability reached
    at the end of training. In training mode each input is zeroed per sample with probability
    ``drop_path[i] · progress`` (kept ones scaled by 1 / keep, so the expectation is unchanged),
    ``progress`` in [0, 1] being what ``schedule`` was last told (0 until then: an unscheduled
    net trains as a plain sum). In eval mode, and without ``drop_path``, it is a plain sum, so
    exporters and latency tables see only the adds.
    """

    op = "sum"

    def __init__(self, coeffs: list[float] | None = None, drop_path: list[float] | None = None):
        super().__init__()
        self.coeffs = None if coeffs is None else [float(c) for c in coeffs]
        self.drop_path = None if drop_path is None else [float(p) for p in drop_path]
        if self.drop_path is not None and not all(0.0 <= p < 1.0 for p in self.drop_path):
            raise ValueError(f"drop_path probabilities must be in [0, 1), not {self.drop_path}")
        self.progress = 0.0

    def schedule(self, fraction: float) -> None:
        """The training progress in [0, 1] (``nas2deploy.train.fit`` tells it every step)."""
        self.progress = min(max(float(fraction), 0.0), 1.0)

    def _dropped(self, xs):
        if len(self.drop_path) != len(xs):
            raise RuntimeError(f"sum has {len(self.drop_path)} drop_path probabilities for "
                               f"{len(xs)} inputs")
        out = []
        for p_max, x in zip(self.drop_path, xs):
            keep = 1.0 - p_max * self.progress
            if keep < 1.0:
                shape = (x.shape[0],) + (1,) * (x.dim() - 1)
                mask = (torch.rand(shape, device=x.device) < keep).to(x.dtype)
                x = x * mask / keep
            out.append(x)
        return out

    def forward(self, *xs):
        if self.drop_path is not None and self.training:
            xs = self._dropped(xs)
        if self.coeffs is None:
            out = xs[0]
            for x in xs[1:]:
                out = out + x
            return out
        if len(self.coeffs) != len(xs):
            raise RuntimeError(f"sum has {len(self.coeffs)} coefficients for {len(xs)} inputs")
        out = xs[0] * self.coeffs[0]
        for c, x in zip(self.coeffs[1:], xs[1:]):
            out = out + x * c
        return out

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {} if self.coeffs is None else {"coeffs": list(self.coeffs)}
        if self.drop_path is not None:
            out["drop_path"] = list(self.drop_path)
        return out


class BNAct(nn.Module):
    """BN → act on its own (used after a sum)."""

    op = "bn_act"

    def __init__(self, c: int, act: str = "relu"):
        super().__init__()
        self.act_name = act
        self.bn = nn.BatchNorm2d(c)
        self.act = make_act(act)

    def forward(self, x):
        return self.act(self.bn(x))

    def spec(self) -> dict[str, Any]:
        return {"c": self.bn.num_features, "act": self.act_name}


class Identity(nn.Module):
    op = "identity"

    def forward(self, x):
        return x

    def spec(self) -> dict[str, Any]:
        return {}


class Head(nn.Module):
    """Global average pool → [dropout] → linear classifier."""

    op = "head"

    def __init__(self, c_in: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.dropout_p = float(dropout)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x):
        return self.fc(self.dropout(x.mean((2, 3))))

    def spec(self) -> dict[str, Any]:
        return {"c_in": self.fc.in_features, "num_classes": self.fc.out_features,
                "dropout": self.dropout_p}


OPS: dict[str, type[nn.Module]] = {
    cls.op: cls for cls in (Conv, SepConv, Pool, MBConv, Sum, BNAct, Identity, Head)
}
