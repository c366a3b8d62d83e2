"""``edgelr compress``: factorize -> distillation fine-tune -> QAT -> TFLite -> validation.

Modules (all import TensorFlow lazily, inside functions):

- :mod:`edgelr.compress.evaluate`  task detection and Keras evaluation (accuracy in %, or loss)
- :mod:`edgelr.compress.distill`   fine-tuning with knowledge distillation from the original model
- :mod:`edgelr.compress.qat`       quantization-aware training with tfmot for the layers it supports
- :mod:`edgelr.compress.distribute` tf.distribute for the fine-tune and QAT (``--distribute``, TF_CONFIG)
- :mod:`edgelr.compress.convert`   TFLite conversion (int8 full-integer, dynamic, float16, float32)
- :mod:`edgelr.compress.validate`  running and checking a ``.tflite`` with ai-edge-litert
- :mod:`edgelr.compress.options`   the run's options, checked up front; rank-plan options resolved once
- :mod:`edgelr.compress.attempt`   one factorized model through fine-tune, QAT, conversion and validation
- :mod:`edgelr.compress.search`    accuracy-aware per-layer rank search
- :mod:`edgelr.compress.result`    summary, report and message of a run (:class:`CompressResult`)
- :mod:`edgelr.compress.outputs`   the output files (written atomically), ``summary.md``, history rows
- :mod:`edgelr.compress.names`     the model names of the outputs (``names.json``)
- :mod:`edgelr.compress.pipeline`  the whole job (:func:`compress`)
"""

from __future__ import annotations
