"""Built-in strategies, installed as ``ttscale.strategies`` and registered by entry point.

- :class:`BestOfN` (``best_of_n``), :class:`Majority` (``majority``),
  :class:`BestOfMajority` (``best_of_majority``), :class:`Adaptive` (``adaptive``) and
  :class:`AheadByK` (``ahead_by_k``): thin async orchestration over a sampler and a verifier.
- :mod:`~ttscale.strategies.beam_search` (``beam_search``, ``dvts``) and
  :mod:`~ttscale.strategies.particle_filtering` (``particle_filtering``): step-level search guided
  by a process reward, over :mod:`~ttscale.strategies.steps` and
  :mod:`~ttscale.strategies.step_search`.
- :mod:`~ttscale.strategies.deepconf` (``deepconf``): selection and early stopping by the model's
  own token confidence; :mod:`~ttscale.strategies.deepening`: iterative deepening, over
  :mod:`~ttscale.strategies.continuation` (continuing a partial answer on a server).
- :mod:`~ttscale.strategies.graph_spec`, :mod:`~ttscale.strategies.graphs` and
  :mod:`~ttscale.strategies.graph_search`: multi-LLM graphs (the spec, running one, searching for
  one).
- :mod:`~ttscale.strategies.extract`: answer extraction and normalisation.
- :mod:`~ttscale.strategies.selection` and :mod:`~ttscale.strategies.stopping`: the pure rules.
- :mod:`~ttscale.strategies.sampling`: sampling policies (hedged sampling, temperature schedules).
- :mod:`~ttscale.strategies.offline`: every strategy's expected accuracy at every budget from
  stored samples, with :mod:`~ttscale.strategies.offline_scan` its scan over random orders.
"""

from ttscale.strategies.adaptive import Adaptive, AdaptiveConfig
from ttscale.strategies.ahead_by_k import AheadByK, AheadByKConfig
from ttscale.strategies.base import StrategyConfig
from ttscale.strategies.best_of_majority import BestOfMajority, BestOfMajorityConfig
from ttscale.strategies.best_of_n import BestOfN, BestOfNConfig
from ttscale.strategies.extract import AnswerEquivalence, get_extractor
from ttscale.strategies.majority import Majority, MajorityConfig
from ttscale.strategies.sampling import (
    FixedSampling,
    HedgedSampling,
    SamplingPolicy,
    TemperatureSchedule,
)

__all__ = [
    "Adaptive",
    "AdaptiveConfig",
    "AheadByK",
    "AheadByKConfig",
    "AnswerEquivalence",
    "BestOfMajority",
    "BestOfMajorityConfig",
    "BestOfN",
    "BestOfNConfig",
    "FixedSampling",
    "HedgedSampling",
    "Majority",
    "MajorityConfig",
    "SamplingPolicy",
    "StrategyConfig",
    "TemperatureSchedule",
    "get_extractor",
]
