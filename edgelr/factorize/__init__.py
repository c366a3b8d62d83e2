"""Low-rank decompositions of weights and rank selection (pure NumPy + tensorly; no Keras here).

Matrices (Dense, 1x1 conv): :func:`truncated_svd`. Conv kernels ``(kh, kw, c_in, c_out)``:
:func:`tucker2`, :func:`cp`, :func:`spatial_svd`. Ranks: :func:`parse_rank_policy` then
:func:`select_matrix_rank` / :func:`select_tucker2_ranks` / :func:`select_cp_rank`, which use
:func:`evbmf_rank` / :func:`energy_rank` on the spectrum. Compute a spectrum once
(:func:`matrix_spectrum`, :func:`unfolding_spectra`) and pass it to both the selector and the
decomposition to avoid factorizing a layer twice. :func:`map_layers` runs per-layer work on all
cores with one BLAS thread per worker (much faster than threaded BLAS on a shared machine).

Every function raises :class:`edgelr.errors.FactorizeError` on bad input.

Example (a k x k conv, EVBMF ranks, one reduction of each Gram matrix)::

    spectra = unfolding_spectra(kernel)                      # kernel: (kh, kw, c_in, c_out)
    ranks = select_tucker2_ranks(kernel, parse_rank_policy("vbmf"), cost=cost, full_cost=full,
                                 multiple=8, spectra=spectra)
    res = tucker2(kernel, ranks, spectra=spectra)            # res.first, res.core, res.last

For spatial SVD the spectrum is ``matrix_spectrum(spatial_matrix(kernel))``.

Recurrent weights as one 3-D tensor (:mod:`edgelr.factorize.tensor3`): :func:`lstm_tensor` stacks an LSTM's
input and recurrent kernels into gates x hidden x (inputs + hidden), :func:`tucker2_3d` decomposes it
(:func:`tensor3_spectra` for its ranks), :func:`lstm_kernels` splits a tensor back into the two kernels.

Data-aware factorization (:mod:`edgelr.factorize.whiten`): give the decompositions the layer's input
statistics (``whitening=`` a second-moment matrix or :func:`whitening`) and rank selection the data-aware
spectrum (:func:`layer_spectrum`; for Tucker-2 ``unfolding_spectra(whiten_kernel(kernel, w))``); the
factors then minimise the layer's output error on the calibration inputs instead of the weight error.
"""

from edgelr.factorize.cp import CPResult, cp, max_cp_rank
from edgelr.factorize.parallel import map_layers
from edgelr.factorize.ranks import (
    RankPolicy,
    parse_rank_policy,
    select_cp_rank,
    select_matrix_rank,
    select_tucker2_ranks,
)
from edgelr.factorize.spectrum import Spectrum, matrix_spectrum, mode_unfolding, unfolding_spectra
from edgelr.factorize.svd import SpatialSVDResult, SVDResult, spatial_matrix, spatial_svd, truncated_svd
from edgelr.factorize.tucker import Tucker2Result, tucker2, whiten_kernel
from edgelr.factorize.tensor3 import (Tensor3Tucker, lstm_kernels, lstm_tensor, project_tensor3, tensor3_spectra,
                                     tucker2_3d)
from edgelr.factorize.vbmf import DEFAULT_WEAKENING, energy_rank, evbmf_rank, evbmf_rank_from_singular_values, weaken_rank
from edgelr.factorize.whiten import Whitening, layer_spectrum, output_error, whiten_matrix, whitening

__all__ = [
    "DEFAULT_WEAKENING",
    "CPResult",
    "RankPolicy",
    "SVDResult",
    "SpatialSVDResult",
    "Spectrum",
    "Tucker2Result",
    "Tensor3Tucker",
    "Whitening",
    "cp",
    "energy_rank",
    "evbmf_rank",
    "evbmf_rank_from_singular_values",
    "weaken_rank",
    "layer_spectrum",
    "lstm_kernels",
    "lstm_tensor",
    "map_layers",
    "matrix_spectrum",
    "max_cp_rank",
    "mode_unfolding",
    "output_error",
    "parse_rank_policy",
    "project_tensor3",
    "select_cp_rank",
    "select_matrix_rank",
    "select_tucker2_ranks",
    "spatial_matrix",
    "spatial_svd",
    "tensor3_spectra",
    "truncated_svd",
    "tucker2",
    "tucker2_3d",
    "unfolding_spectra",
    "whiten_kernel",
    "whiten_matrix",
    "whitening",
]
