"""An example ttscale plugin: the ``quorum`` strategy and the ``answer_format`` verifier."""

from ttscale_example_plugin.strategy import Quorum, QuorumConfig
from ttscale_example_plugin.verifier import AnswerFormat, AnswerFormatConfig

__all__ = ["AnswerFormat", "AnswerFormatConfig", "Quorum", "QuorumConfig"]
