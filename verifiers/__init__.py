"""Built-in verifiers, installed as ``ttscale.verifiers`` and registered by entry point.

Each module is imported on demand (``ttscale.verifiers.unit_tests`` and so on), so that optional
dependencies (math-verify, transformers, torch) load only for the verifier that needs them.

- :mod:`.base`: :class:`~.base.CachedVerifier`, a score cache around any verifier.
- :mod:`.sandbox`: running untrusted Python in a limited subprocess or under bubblewrap.
- :mod:`.unit_tests`: ``unit_tests`` (HumanEval, assert lists, pytest files).
- :mod:`.math_answers`: ``math`` (math-verify, with a normalising fallback) and ``exact_match``.
- :mod:`.reward_model`: ``reward_model`` (local transformers classifier or served ``/classify``).
- :mod:`.judge`: ``judge`` (an LLM judge, pointwise or yes/no by logprobs).
- :mod:`.process_reward`: step-wise scores and their aggregation (``process_reward``).
- :mod:`.compose`: ``weighted``, ``gate``, ``cascade``.
- :mod:`.soundness`: false-positive rate, ceiling and K_opt from a weak and a strong verifier.
"""
