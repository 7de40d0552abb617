"""The LLM recommender: a frozen SmolLM2 that ranks candidates by likelihood."""

from fedllmrec.models.llm.backbone import DEFAULT_LLM, LLMConfig, load_llm
from fedllmrec.models.llm.scoring import score_candidates, score_candidates_uncached

__all__ = ["DEFAULT_LLM", "LLMConfig", "load_llm", "score_candidates", "score_candidates_uncached"]
