"""nas2deploy: neural architecture search as structured pruning of a supernet, to a measured bundle."""

import sys

__version__ = "0.1.0"

# `import openvino` posts a usage event from a child process unless its telemetry package cannot
# be imported (it then uses a no-op stub). nas2deploy never sends anything over the network.
if "openvino" not in sys.modules:
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]


def load_bundle(path):
    """The PyTorch subnet of a bundle, rebuilt from architecture.json + model.safetensors."""
    from .bundle import load_bundle as _load

    return _load(path)


__all__ = ["__version__", "load_bundle"]
