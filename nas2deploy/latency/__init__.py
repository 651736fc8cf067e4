"""Latency: timing on the target runtime, and the cheap estimates that steer a search.

Layers, each importing only those above it:

- ``measure``: the timing protocols, one runner alone or many interleaved (imports nothing
  from nas2deploy);
- ``model``: ``LatencyModel``, ``FlopsProxy``, ``secant``;
- ``grid``: the op signatures and widths a table is measured at;
- ``table``: ``LatencyTable``, interpolation, ``LUTModel`` (the plain sum);
- ``collect``: building a table in the target runtime, timing whole networks, random subnets;
- ``calibrate``: ``CalibratedLUT``;
- ``cache``: tables and calibrations cached per (space, target, machine);
- ``make``: ``make_latency_model`` and ``build_table_cli``.

Only ``measure`` and ``model`` are re-exported here: ``collect`` loads models through
``nas2deploy.runtime``, which times with ``measure``, so re-exporting anything from ``collect``
down would import ``runtime`` while ``runtime`` imports this package. Import those by their
module path. ``nas2deploy.latency.measure`` is the function; the module's other names are
imported from it with ``from nas2deploy.latency.measure import ...``.
"""

from .measure import (INSTANCES, LatencyReport, Protocol, TableProtocol, Timing, measure,
                      measure_instances, time_interleaved)
from .model import FlopsProxy, LatencyModel, secant

__all__ = ["INSTANCES", "FlopsProxy", "LatencyModel", "LatencyReport", "Protocol",
           "TableProtocol", "Timing", "measure", "measure_instances", "secant",
           "time_interleaved"]
