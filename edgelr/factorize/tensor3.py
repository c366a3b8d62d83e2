"""Recurrent weights as one 3-D tensor, decomposed by Tucker-2 on its last two modes (pure NumPy).

An LSTM with input size D, H units and G = 4 gates (Keras order i, f, c, o) computes, per gate g,
``z_g = W_g [x; h] + b_g`` with ``W_g`` of shape ``(H, D + H)``: the input kernel's and the recurrent
kernel's columns for that gate side by side. Stacking the gates gives

    T  (G, H, D + H),   T[g] = W_g = [kernel[:, g H:(g+1) H]; recurrent[:, g H:(g+1) H]]^T

Tucker-2 on modes 1 (hidden) and 2 (inputs) gives shared factors and a small core::

    T[g] ~= U G_g V^T,   U (H, R_h) and V (D + H, R_x) with orthonormal columns,  G (G, R_h, R_x)

so a step projects ``[x; h]`` to ``R_x`` values once (``V``), maps them to ``G x R_h`` (the core), and
expands every gate with the same ``U``: per step ``(D + H) R_x + G R_h R_x + G R_h H`` MACs instead of
``G H (D + H)`` (``U`` is stored once). At ``(R_h, R_x) = (H, D + H)`` the decomposition is exact.

The maths is :func:`edgelr.factorize.tucker2` on the tensor viewed as a ``(1, G, H, D + H)`` "kernel"
(its two channel modes are the modes decomposed here; the G gates play the spatial positions), so rank
policies (:func:`edgelr.factorize.select_tucker2_ranks`) and spectra apply unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgelr.errors import FactorizeError


@dataclass(frozen=True)
class Tensor3Tucker:
    """Tucker-2 factors of a ``(G, H, D + H)`` recurrent weight tensor.

    Attributes
    ----------
    hidden : ndarray, shape (H, R_h)
        ``U``, orthonormal columns, shared by the gates (expands each gate to H units).
    core : ndarray, shape (G, R_h, R_x)
        ``G_g`` per gate.
    inputs : ndarray, shape (D + H, R_x)
        ``V``, orthonormal columns: the projection of ``[x; h]``.
    ranks : (int, int)
        ``(R_h, R_x)``.
    rel_error : float
        ``||T - T_hat||_F / ||T||_F``.
    """

    hidden: np.ndarray
    core: np.ndarray
    inputs: np.ndarray
    ranks: tuple[int, int]
    rel_error: float

    def reconstruct(self) -> np.ndarray:
        """``T_hat (G, H, D + H)``."""
        return np.einsum("ha,gab,xb->ghx", self.hidden, self.core, self.inputs)


def lstm_tensor(kernel: np.ndarray, recurrent_kernel: np.ndarray, gates: int = 4) -> np.ndarray:
    """The ``(G, H, D + H)`` tensor of Keras LSTM kernels ``kernel (D, G H)``, ``recurrent_kernel (H, G H)``."""
    k = np.asarray(kernel, dtype=np.float64)
    r = np.asarray(recurrent_kernel, dtype=np.float64)
    if k.ndim != 2 or r.ndim != 2 or k.shape[1] != r.shape[1] or r.shape[1] != gates * r.shape[0]:
        raise FactorizeError(f"lstm_tensor: got kernel {k.shape} and recurrent kernel {r.shape}; expected "
                             f"(D, {gates}H) and (H, {gates}H)")
    h = r.shape[0]
    both = np.concatenate([k, r], axis=0)  # (D + H, G H)
    return both.reshape(both.shape[0], gates, h).transpose(1, 2, 0)


def lstm_kernels(tensor: np.ndarray, input_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`lstm_tensor`: ``(kernel (D, G H), recurrent_kernel (H, G H))``, float32."""
    t = np.asarray(tensor)
    g, h, width = t.shape
    both = t.transpose(2, 0, 1).reshape(width, g * h)
    return both[:input_dim].astype(np.float32), both[input_dim:].astype(np.float32)


def as_kernel(tensor: np.ndarray) -> np.ndarray:
    """``(G, H, D + H)`` viewed as the ``(1, G, H, D + H)`` kernel :func:`edgelr.factorize.tucker2` takes."""
    t = np.asarray(tensor, dtype=np.float64)
    if t.ndim != 3:
        raise FactorizeError(f"tensor: got shape {t.shape}; expected (gates, hidden, inputs)")
    return t[None]


def tensor3_spectra(tensor: np.ndarray) -> tuple:
    """Spectra of the hidden-mode and input-mode unfoldings (``edgelr.factorize.Spectrum`` each)."""
    from edgelr.factorize.spectrum import unfolding_spectra

    return unfolding_spectra(as_kernel(tensor))


def tucker2_3d(tensor: np.ndarray, ranks: tuple[int, int], *, max_iter: int = 3,
               spectra: tuple | None = None) -> Tensor3Tucker:
    """Tucker-2 of a ``(G, H, D + H)`` tensor on its hidden and input modes at ``ranks = (R_h, R_x)``.

    HOSVD start plus ``max_iter`` HOOI sweeps (:func:`edgelr.factorize.tucker2`); exact when the tensor
    has multilinear rank at most ``ranks`` in those modes.
    """
    from edgelr.factorize.tucker import tucker2

    res = tucker2(as_kernel(tensor), (int(ranks[0]), int(ranks[1])), max_iter=max_iter, spectra=spectra)
    return Tensor3Tucker(np.asarray(res.first), np.asarray(res.core)[0], np.asarray(res.last).T,
                         (int(res.ranks[0]), int(res.ranks[1])), float(res.rel_error))


def project_tensor3(tensor: np.ndarray, ranks: tuple[int, int]) -> np.ndarray:
    """The tensor projected to multilinear rank ``ranks`` on its hidden and input modes (HOSVD
    projection ``T x_1 U U^T x_2 V V^T``), same shape; Tucker-2 of the result at ``ranks`` is exact."""
    res = tucker2_3d(tensor, ranks, max_iter=0)
    return res.reconstruct()
