"""Low-rank recurrent cells, registered as ``edgelr>LowRankLSTMCell`` and ``edgelr>LowRankGRUCell``.

The recurrent kernel ``U (H, G*H)`` (G = 4 gates for LSTM, 3 for GRU) is stored as two factors
``recurrent_left (H, r)`` and ``recurrent_right (r, G*H)``: ``h @ U ~= (h @ left) @ right``. Everything else
is the stock tf_keras cell's math (gate order i, f, c, o for LSTM; z, r, h with ``reset_after=True`` for GRU).
They run inside a stock ``tf_keras.layers.RNN``. TFLite converts them to a ``WHILE`` loop of builtin ops
(not the fused LSTM op); full-integer int8 conversion needs ``unroll=True`` (short, fixed sequence length).

This module imports TensorFlow: import it (``import edgelr.rewrite.cells``) before loading a saved model that
contains these cells; ``edgelr.rewrite`` imports it when it builds one.
"""

from __future__ import annotations

from typing import Any

from edgelr.tfcompat import keras2, tf

_keras = keras2()
_tf = tf()


class _LowRankCellBase(_keras.layers.Layer):
    gates: int = 0

    def __init__(self, units: int, rank: int, activation: Any = "tanh", recurrent_activation: Any = "sigmoid",
                 use_bias: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = int(units)
        self.rank = int(rank)
        self.activation = _keras.activations.get(activation)
        self.recurrent_activation = _keras.activations.get(recurrent_activation)
        self.use_bias = bool(use_bias)

    @property
    def output_size(self) -> int:
        return self.units

    def _build_common(self, input_shape: Any) -> None:
        d = int(input_shape[-1])
        width = self.gates * self.units
        self.kernel = self.add_weight(name="kernel", shape=(d, width), initializer="glorot_uniform")
        self.recurrent_left = self.add_weight(name="recurrent_left", shape=(self.units, self.rank),
                                              initializer="orthogonal")
        self.recurrent_right = self.add_weight(name="recurrent_right", shape=(self.rank, width),
                                               initializer="orthogonal")

    def _recurrent(self, h: Any) -> Any:
        return _tf.matmul(_tf.matmul(h, self.recurrent_left), self.recurrent_right)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(units=self.units, rank=self.rank, use_bias=self.use_bias,
                      activation=_keras.activations.serialize(self.activation),
                      recurrent_activation=_keras.activations.serialize(self.recurrent_activation))
        return config


@_keras.saving.register_keras_serializable(package="edgelr")
class LowRankLSTMCell(_LowRankCellBase):
    """LSTM cell with a rank-``rank`` recurrent kernel. Weights: kernel (D, 4H), recurrent_left (H, r),
    recurrent_right (r, 4H), bias (4H,) when ``use_bias``."""

    gates = 4

    @property
    def state_size(self) -> list[int]:
        return [self.units, self.units]

    def build(self, input_shape: Any) -> None:
        self._build_common(input_shape)
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(4 * self.units,), initializer="zeros")
        self.built = True

    def call(self, inputs: Any, states: Any, training: Any = None) -> Any:
        h_prev, c_prev = states[0], states[1]
        z = _tf.matmul(inputs, self.kernel) + self._recurrent(h_prev)
        if self.use_bias:
            z = z + self.bias
        z_i, z_f, z_c, z_o = _tf.split(z, 4, axis=-1)
        i = self.recurrent_activation(z_i)
        f = self.recurrent_activation(z_f)
        c = f * c_prev + i * self.activation(z_c)
        o = self.recurrent_activation(z_o)
        h = o * self.activation(c)
        return h, [h, c]


@_keras.saving.register_keras_serializable(package="edgelr")
class LowRankGRUCell(_LowRankCellBase):
    """GRU cell (``reset_after=True``) with a rank-``rank`` recurrent kernel. Weights: kernel (D, 3H),
    recurrent_left (H, r), recurrent_right (r, 3H), bias (2, 3H) when ``use_bias`` (input, recurrent)."""

    gates = 3

    @property
    def state_size(self) -> int:
        return self.units

    def build(self, input_shape: Any) -> None:
        self._build_common(input_shape)
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(2, 3 * self.units), initializer="zeros")
        self.built = True

    def call(self, inputs: Any, states: Any, training: Any = None) -> Any:
        h_prev = states[0] if isinstance(states, (list, tuple)) else states
        x = _tf.matmul(inputs, self.kernel)
        inner = self._recurrent(h_prev)
        if self.use_bias:
            x = x + self.bias[0]
            inner = inner + self.bias[1]
        x_z, x_r, x_h = _tf.split(x, 3, axis=-1)
        r_z, r_r, r_h = _tf.split(inner, 3, axis=-1)
        z = self.recurrent_activation(x_z + r_z)
        r = self.recurrent_activation(x_r + r_r)
        hh = self.activation(x_h + r * r_h)
        h = z * h_prev + (1.0 - z) * hh
        return h, [h]


@_keras.saving.register_keras_serializable(package="edgelr")
class Tucker3LSTMCell(_keras.layers.Layer):
    """LSTM cell whose gate weights are one Tucker-2-factorized tensor (:mod:`edgelr.factorize.tensor3`).

    Input: ``x V_x`` (R_x values per step; the input projection runs outside the loop as a Dense layer).
    Step: ``p = x V_x + h V_h`` (R_x), ``q = p C`` (4 R_h, the core of every gate), ``z_g = q_g U^T + b_g``
    (the shared hidden factor expands each gate), then the stock LSTM gate math (order i, f, c, o).
    Weights: recurrent_in ``V_h (H, R_x)``, core ``C (R_x, 4 R_h)``, hidden ``U^T (R_h, H)``, bias (4H,).
    """

    def __init__(self, units: int, hidden_rank: int, activation: Any = "tanh",
                 recurrent_activation: Any = "sigmoid", use_bias: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = int(units)
        self.hidden_rank = int(hidden_rank)
        self.activation = _keras.activations.get(activation)
        self.recurrent_activation = _keras.activations.get(recurrent_activation)
        self.use_bias = bool(use_bias)

    @property
    def state_size(self) -> list[int]:
        return [self.units, self.units]

    @property
    def output_size(self) -> int:
        return self.units

    def step_macs(self, input_dim: int) -> int:
        """MACs of one step on ``input_dim`` (= R_x) inputs: ``H R_x + 4 R_h R_x + 4 R_h H``."""
        return self.units * int(input_dim) + 4 * self.hidden_rank * (int(input_dim) + self.units)

    def build(self, input_shape: Any) -> None:
        r_x = int(input_shape[-1])
        self.recurrent_in = self.add_weight(name="recurrent_in", shape=(self.units, r_x), initializer="orthogonal")
        self.core = self.add_weight(name="core", shape=(r_x, 4 * self.hidden_rank), initializer="glorot_uniform")
        self.hidden = self.add_weight(name="hidden", shape=(self.hidden_rank, self.units), initializer="orthogonal")
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(4 * self.units,), initializer="zeros")
        self.built = True

    def call(self, inputs: Any, states: Any, training: Any = None) -> Any:
        h_prev, c_prev = states[0], states[1]
        q = _tf.matmul(inputs + _tf.matmul(h_prev, self.recurrent_in), self.core)
        # one matmul per gate with the shared U^T (a reshape to (4 B, R_h) instead fails XNNPACK's int8 prepare)
        z_i, z_f, z_c, z_o = (_tf.matmul(q_g, self.hidden) for q_g in _tf.split(q, 4, axis=-1))
        if self.use_bias:
            b_i, b_f, b_c, b_o = _tf.split(self.bias, 4)
            z_i, z_f, z_c, z_o = z_i + b_i, z_f + b_f, z_c + b_c, z_o + b_o
        i = self.recurrent_activation(z_i)
        f = self.recurrent_activation(z_f)
        c = f * c_prev + i * self.activation(z_c)
        o = self.recurrent_activation(z_o)
        h = o * self.activation(c)
        return h, [h, c]

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(units=self.units, hidden_rank=self.hidden_rank, use_bias=self.use_bias,
                      activation=_keras.activations.serialize(self.activation),
                      recurrent_activation=_keras.activations.serialize(self.recurrent_activation))
        return config
