"""The shrink search as typed trials.

* :mod:`~onnxshrink.search.options`: :class:`ShrinkOptions`, what a run is asked to do;
* :mod:`~onnxshrink.search.trial`: :class:`Candidate` (what is tried),
  :class:`Trial` and :class:`Outcome` (what came of it), :class:`SearchInputs`
  and :class:`SearchState` (what trials read and share);
* :mod:`~onnxshrink.search.stages`: one trial's prune, quantize, validate, pack;
* :mod:`~onnxshrink.search.loop`: the order of candidates;
* :mod:`~onnxshrink.search.choice`: which of two trials wins;
* :mod:`~onnxshrink.search.budget`: the gate as a budget shared between pruning and quantization.

:mod:`onnxshrink.pipeline` composes simplify, this search, and the final pack.
"""

from onnxshrink.search.loop import SearchResult, search
from onnxshrink.search.options import ShrinkOptions
from onnxshrink.search.trial import Candidate, Outcome, SearchInputs, SearchState, Stage, Trial

__all__ = ["Candidate", "Outcome", "SearchInputs", "SearchResult", "SearchState", "ShrinkOptions", "Stage", "Trial",
           "search"]
