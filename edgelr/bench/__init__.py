"""Benchmark orchestration (:mod:`.run`), the per-OS harnesses (:mod:`.harnesses`), benchmark-tool output
parsing (:mod:`.parse`, :mod:`.parsers`) and the long results frame (:mod:`.frame`)."""
