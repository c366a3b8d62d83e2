"""Talking to devices: transports (local, ssh, adb), the inventory, sensors, and the on-device runner.

Nothing here imports TensorFlow, nor edgelr's orchestration (``edgelr.bench`` uses this package, never
the other way round). ``device_agents/runner.py`` runs *on* the device with only the standard library,
numpy and ai-edge-litert. Transports and probes are plugins registered in
:mod:`device_agents.registry` registries; :mod:`device_agents.builtin` imports them.
"""
