"""The regression suite file format, documented once (read by ``edgelr regress --help`` without numpy)."""

SUITE_FORMAT = """\
[suite]
name = "nightly"
runs = 20                  # timed inferences per session
sessions = 10              # sessions (fresh benchmark processes) per model and device
history = "reports/history"

[[models]]
name = "classifier"
path = "models/classifier.tflite"

[[devices]]
name = "pi4"

[thresholds]
latency = "5%"
peak_memory = "10%"
energy = "8%"
accuracy = "0.5pt"

Optional [suite] keys: sessions (10; repeat is its old name), max_time (s per device,
none), warmup (1), threads (target's), cooldown_c (45), baseline ("last"), alpha
(0.01), confirm (true: a suggested change is re-measured interleaved with the stored baseline model),
confirm_sessions (40: the most blocks a confirmation re-run may use; it uses as many as the device's
noise needs to resolve the latency threshold, at least sessions). Relative paths (models, history) are
resolved against the suite file's folder.
"""
