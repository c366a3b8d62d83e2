"""What runs on the phone: ``harness.sh``, a POSIX-sh wrapper around LiteRT's ``benchmark_model``.

The host side (push, run, parse) is :mod:`device_agents.android`; see ``android_bench/README.md``.
"""
