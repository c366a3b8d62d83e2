"""Talking to devices: transports (local, ssh, adb), the inventory, and the on-device runners.

Nothing here imports TensorFlow. ``device_agents/runner.py`` runs *on* the device with only the
standard library, numpy and ai-edge-litert.
"""
