"""rerankers-plugins: second-stage reranking for RAG chains, with LangChain and LlamaIndex adapters.

Importing this package needs no optional dependency; each backend asks for its extra when built.
"""

from rerankers_plugins._deprecation import renamed_module_attributes
from rerankers_plugins.errors import (
    BackendError,
    BudgetExceeded,
    ConfigError,
    DeadlineExceeded,
    MissingExtraError,
    Overloaded,
    RerankError,
)
from rerankers_plugins.pipeline import (
    CachedScorer,
    Calibrated,
    Cascade,
    Entry,
    Explained,
    Hybrid,
    LongDocument,
    Ranking,
    ScorerLike,
    Selective,
    Signal,
    Stage,
    Strategy,
    Threshold,
    aexplain,
    arerank,
    as_strategy,
    calibrate,
    explain,
    rerank,
)
from rerankers_plugins.registry import get_scorer
from rerankers_plugins.scorers._hf import packaged_model_path
from rerankers_plugins.scorers._scheduler import QueueStats, SchedulerOptions
from rerankers_plugins.scorers.base import BaseScorer, Ranker, Scorer
from rerankers_plugins.scorers.bi_encoder import BiEncoderScorer
from rerankers_plugins.scorers.cohere import CohereScorer
from rerankers_plugins.scorers.colbert import ColBERTScorer
from rerankers_plugins.scorers.cross_encoder import CrossEncoderScorer
from rerankers_plugins.scorers.fake import FakeScorer
from rerankers_plugins.scorers.lexical import BM25Scorer
from rerankers_plugins.scorers.limits import RateLimit, Usage
from rerankers_plugins.scorers.llm import RENAMED as _LLM_RENAMED
from rerankers_plugins.scorers.llm import LLMListwiseRanker, LLMPairwiseRanker, LLMPointwiseScorer
from rerankers_plugins.scorers.poly_encoder import PolyEncoderScorer
from rerankers_plugins.scorers.remote import RemoteScorer
from rerankers_plugins.scorers.retry import RetryPolicy
from rerankers_plugins.scorers.seq2seq import Seq2SeqScorer
from rerankers_plugins.templates import DocumentTemplate
from rerankers_plugins.types import Candidate, Scored, ScoreScale

__version__ = "0.1.0"

__all__ = [
    "BM25Scorer",
    "BackendError",
    "BaseScorer",
    "BiEncoderScorer",
    "BudgetExceeded",
    "CachedScorer",
    "Calibrated",
    "Candidate",
    "Cascade",
    "CohereScorer",
    "ColBERTScorer",
    "ConfigError",
    "CrossEncoderScorer",
    "DeadlineExceeded",
    "DocumentTemplate",
    "Entry",
    "Explained",
    "FakeScorer",
    "Hybrid",
    "LLMListwiseRanker",
    "LLMPairwiseRanker",
    "LLMPointwiseScorer",
    "LongDocument",
    "MissingExtraError",
    "Overloaded",
    "PolyEncoderScorer",
    "QueueStats",
    "Ranker",
    "Ranking",
    "RateLimit",
    "RemoteScorer",
    "RerankError",
    "RetryPolicy",
    "SchedulerOptions",
    "ScoreScale",
    "Scored",
    "Scorer",
    "ScorerLike",
    "Selective",
    "Seq2SeqScorer",
    "Signal",
    "Stage",
    "Strategy",
    "Threshold",
    "Usage",
    "__version__",
    "aexplain",
    "arerank",
    "as_strategy",
    "calibrate",
    "explain",
    "get_scorer",
    "packaged_model_path",
    "rerank",
]

#: names of the last release, answered with a FutureWarning (the LLM rankers' old names)
__getattr__ = renamed_module_attributes("rerankers_plugins", _LLM_RENAMED)
