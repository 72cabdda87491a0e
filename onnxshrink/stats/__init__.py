"""What pruning and quantization share: statistics of layer inputs and the layer-wise solvers on them.

* :mod:`~onnxshrink.stats.layer_inputs`: per weight, running sums of its
  input over calibration batches (the Hessian ``XᵀX``, squared norms, means),
  mergeable across parts of the data; the matrix view of Conv/Gemm/MatMul weights;
* :mod:`~onnxshrink.stats.obs`: the damped inverse Cholesky factor of a
  Hessian and the OBS column sweep (SparseGPT's pruning, GPTQ's rounding);
* :mod:`~onnxshrink.stats.masks`: masks of the lowest scores, counted exactly;
* :mod:`~onnxshrink.stats.calibration`: calibration data as a bounded list of batches;
* :mod:`~onnxshrink.stats.blas`: numpy's BLAS on one thread for the solvers.

This package sits below :mod:`onnxshrink.pruning`, :mod:`onnxshrink.lowbit`
and :mod:`onnxshrink.quantization` and imports none of them.
"""
