"""The one module that imports device_agents' plugin modules, so that their registrations happen.

Importing a plugin module registers what it defines (:mod:`device_agents.registry`):

* transports in :data:`device_agents.transport.TRANSPORTS`: ``local``, ``ssh``, ``adb``, ``labgrid``
  (which imports labgrid itself only when a lab device is used);
* energy and thermal probes in :data:`device_agents.probes.ENERGY_PROBES` /
  :data:`~device_agents.probes.THERMAL_PROBES`: the generic sysfs ones (:mod:`device_agents.probes`)
  and Android's ODPM and battery (:mod:`device_agents.android`).

Adding a transport or a probe is one module plus one import line below. :mod:`device_agents.inventory`
imports this module, so every device spec comes with every plugin registered.
"""

from device_agents import adb, android, labgrid, local, probes, ssh  # noqa: F401  (registers the plugins)
from device_agents.probes import ENERGY_PROBES, THERMAL_PROBES
from device_agents.transport import TRANSPORTS

__all__ = ["ENERGY_PROBES", "THERMAL_PROBES", "TRANSPORTS"]
