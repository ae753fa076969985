"""The LLM rerankers' prompts: pieces with named placeholders, checked when a reranker is built.

Each reranker declares its prompt pieces (options) and the placeholders each piece takes:

* :class:`~.listwise.LLMListwiseRanker`: ``system_prompt`` ({query}, {num}), ``prompt``
  ({query}, {passages} required; {num}), ``passage_template`` ({index}, {passage} required);
* :class:`~.pointwise.LLMPointwiseScorer`: ``system_prompt`` ({query}), ``prompt`` ({query},
  {passage} required);
* :class:`~.pairwise.LLMPairwiseRanker`: ``system_prompt`` ({query}), ``prompt`` ({query},
  {passage_a}, {passage_b} required).

A piece is a ``str.format`` template (a literal brace is written ``{{`` or ``}}``). Anything else
is a :class:`~rerankers_plugins.errors.ConfigError` at construction naming the option and the
placeholder: a value that is not a string, an unknown or missing placeholder, a positional one
(``{}``, ``{0}``), attribute or index access (``{query.x}``, ``{query[0]}``), a conversion or
format spec (``{query!r}``, ``{query:>9}``), unbalanced braces. Values are substituted once: a
passage holding braces is text, never a placeholder.

LlamaIndex's ``LLMRerank(choice_select_prompt=...)`` is translated by :func:`choice_select_options`
into the listwise ranker's options, and its answers (``Doc: 9, Relevance: 7`` lines) are read by
:func:`parse_choice_select`.
"""

from __future__ import annotations

import re
import string
import sys
from dataclasses import dataclass
from typing import Any

from rerankers_plugins.errors import ConfigError

__all__ = [
    "CHOICE_SELECT_PASSAGE",
    "CHOICE_SELECT_SEPARATOR",
    "Template",
    "choice_select_options",
    "parse_choice_select",
]

_NAME = re.compile(r"[A-Za-z_]\w*")
_LITERAL = "write a literal brace as {{ or }}"


def _takes(required: tuple[str, ...], optional: tuple[str, ...]) -> str:
    named = [f"{{{n}}} (required)" for n in required] + [f"{{{n}}}" for n in optional]
    return ", ".join(named) or "no placeholders"


@dataclass(frozen=True)
class Template:
    """One checked prompt piece: ``text``, a ``str.format`` template whose placeholders
    (``used``) are plain names the piece allows, its required ones included.

    >>> t = Template.check("Ranker", "prompt", "Query: {query}", required=("query",))
    >>> t.render(query="red {apple}")
    'Query: red {apple}'
    >>> Template.check("Ranker", "prompt", "Query: {qeury}", required=("query",))
    Traceback (most recent call last):
    ...
    rerankers_plugins.errors.ConfigError: Ranker(prompt=...): unknown placeholder {qeury}; prompt takes {query} (required); write a literal brace as {{ or }}
    """

    option: str
    text: str
    used: tuple[str, ...]

    @classmethod
    def check(
        cls,
        owner: str,
        option: str,
        text: Any,
        *,
        required: tuple[str, ...] = (),
        optional: tuple[str, ...] = (),
    ) -> Template:
        """``text`` as the ``option`` piece of ``owner``, or a ConfigError naming what is wrong."""
        where = f"{owner}({option}=...)"
        takes = f"{option} takes {_takes(required, optional)}"
        if not isinstance(text, str):
            hint = (
                "; a LlamaIndex prompt template is LLMListwiseRerank(choice_select_prompt=...), or pass its text"
                if isinstance(getattr(text, "template", None), str)
                else ""
            )
            raise ConfigError(
                f"{where}: a prompt is a string with named placeholders, got {type(text).__name__}; {takes}{hint}"
            )
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise ConfigError(f"{where}: unbalanced braces ({exc}); {_LITERAL}; {takes}") from None
        used: dict[str, None] = {}
        for _, field, spec, conversion in parsed:
            if field is None:
                continue
            shown = (
                "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            )
            head = re.match(r"[^.\[]*", field)
            first = head.group() if head else field
            if first == "" or first.isdigit():
                raise ConfigError(f"{where}: positional placeholder {shown}: name it; {takes}")
            if _NAME.fullmatch(first) and first != field:
                raise ConfigError(
                    f"{where}: {shown} accesses an attribute or an index; placeholders are plain names; {takes}"
                )
            if field not in (*required, *optional):
                raise ConfigError(f"{where}: unknown placeholder {shown}; {takes}; {_LITERAL}")
            if conversion or spec:
                raise ConfigError(
                    f"{where}: {shown} has a conversion or a format spec; placeholders are plain names; {takes}"
                )
            used[field] = None
        missing = [n for n in required if n not in used]
        if missing:
            raise ConfigError(f"{where} has no {{{missing[0]}}} placeholder; {takes}")
        return cls(option, text, tuple(used))

    def render(self, **values: str) -> str:
        """The text with its placeholders filled (every allowed name must be given)."""
        return self.text.format_map(values)


# -- LlamaIndex's LLMRerank -----------------------------------------------------------------------

#: how LlamaIndex's ``LLMRerank`` shows each node of a batch (``default_format_node_batch_fn``)
CHOICE_SELECT_PASSAGE = "Document {index}:\n{passage}"
#: and what it puts between two of them
CHOICE_SELECT_SEPARATOR = "\n\n"

# what LlamaIndex's SafeFormatter substitutes, and which of those are its template variables
_LI_FIELD = re.compile(r"\{([^{}]+)\}")
_LI_VARIABLE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*(?:\.[a-zA-Z_][a-zA-Z0-9_]*)*")
_INSTEAD = (
    "pass a string (or a PromptTemplate) with {context_str} and {query_str} only, or the listwise "
    "ranker's own prompt=... ({query}, {passages}, {num}) and system_prompt=..."
)


def _loaded(module: str, name: str) -> type | None:
    """A class of a module that is already imported (an object of a module never imported cannot
    be an instance of it): recognises LlamaIndex's templates without importing LlamaIndex."""
    found = getattr(sys.modules.get(module), name, None)
    return found if isinstance(found, type) else None


def _llama_index_template(prompt: Any) -> tuple[str, dict[str, Any], dict[str, str]]:
    """The template text, its partial variables and its variable mappings; a ConfigError for what
    cannot carry over."""
    if isinstance(prompt, str):
        return prompt, {}, {}
    template_cls = _loaded("llama_index.core.prompts.base", "PromptTemplate")
    if template_cls is not None and isinstance(prompt, template_cls):
        template: Any = prompt  # a LlamaIndex PromptTemplate, read by its documented fields
        if template.function_mappings:
            raise ConfigError(
                f"choice_select_prompt: function_mappings ({', '.join(sorted(template.function_mappings))}) "
                f"cannot be translated (their values are computed per call); {_INSTEAD}"
            )
        if template.output_parser is not None:
            raise ConfigError(
                "choice_select_prompt: an output_parser cannot be translated (answers are parsed and "
                f"repaired by the reranker); {_INSTEAD}"
            )
        return template.template, dict(template.kwargs), dict(template.template_var_mappings or {})
    base = _loaded("llama_index.core.prompts.base", "BasePromptTemplate")
    kind = (
        f"a {type(prompt).__name__} (only a PromptTemplate's text carries over)"
        if base is not None and isinstance(prompt, base)
        else f"a {type(prompt).__name__}"
    )
    raise ConfigError(
        f"choice_select_prompt must be a string or a LlamaIndex PromptTemplate, got {kind}; {_INSTEAD}"
    )


def choice_select_options(prompt: Any) -> dict[str, Any]:
    """The :class:`~.listwise.LLMListwiseRanker` options that ask what LlamaIndex's
    ``LLMRerank(choice_select_prompt=prompt)`` asks, in the same words.

    ``prompt`` is a string or a LlamaIndex ``PromptTemplate`` written for LlamaIndex (its
    ``{context_str}`` and ``{query_str}``; other braces are text, as LlamaIndex reads them;
    ``partial_format`` values and ``template_var_mappings`` are applied). The batch of documents is
    shown as LlamaIndex shows it (``Document 1:`` and the text, a blank line between two), in one
    user message, and the answer is read as ``Doc: 9, Relevance: 7`` lines
    (``answer_format="choice_select"``). A ConfigError says what to pass instead for what does not
    carry over: another template variable, function mappings, an output parser, a chat or
    selector template.

    >>> options = choice_select_options("Docs:\\n{context_str}\\nQuestion: {query_str} {json: 1}")
    >>> options["prompt"], options["answer_format"]
    ('Docs:\\n{passages}\\nQuestion: {query} {{json: 1}}', 'choice_select')
    """
    text, partial, mappings = _llama_index_template(prompt)
    # LlamaIndex fills a template with its partial variables and the call's (context_str and
    # query_str win), each under the name template_var_mappings gives it
    ours = {"context_str": "{passages}", "query_str": "{query}"}
    values = {k: str(v).replace("{", "{{").replace("}", "}}") for k, v in partial.items() if k not in ours}
    values.update(ours)
    mapped = {mappings.get(k, k): v for k, v in values.items()}
    out: list[str] = []
    used: set[str] = set()
    unknown: list[str] = []
    end = 0
    for m in _LI_FIELD.finditer(text):
        out.append(text[end : m.start()].replace("{", "{{").replace("}", "}}"))
        key = m.group(1)
        if key in mapped:
            out.append(mapped[key])
            used.add(mapped[key])
        elif _LI_VARIABLE.fullmatch(key):
            unknown.append("{" + key + "}")
        else:  # not a variable: LlamaIndex leaves it as written
            out.append("{{" + key + "}}")
        end = m.end()
    out.append(text[end:].replace("{", "{{").replace("}", "}}"))
    if unknown:
        raise ConfigError(
            f"choice_select_prompt: template variable {', '.join(unknown)} is not one LLMRerank fills "
            f"(it fills {{context_str}} and {{query_str}}): give it a value with .partial_format(...) or "
            f"write it into the text; or {_INSTEAD}"
        )
    for ours_name, theirs in (("{passages}", "context_str"), ("{query}", "query_str")):
        if ours_name not in used:
            shown = mappings.get(theirs, theirs)
            raise ConfigError(
                f"choice_select_prompt has no {{{shown}}}: the {'documents' if theirs == 'context_str' else 'question'} "
                f"would not be in the prompt; {_INSTEAD}"
            )
    return {
        "system_prompt": None,
        "prompt": "".join(out),
        "passage_template": CHOICE_SELECT_PASSAGE,
        "passage_separator": CHOICE_SELECT_SEPARATOR,
        "answer_format": "choice_select",
    }


_DOC = re.compile(r"\bdoc(?:ument)?s?\b[\s:#*_.\-\[(]*(?:(?:no|number)\b[\s:#*_.\-]*)?(\d+)", re.IGNORECASE)
_RELEVANCE = re.compile(r"\brelevan(?:ce|cy|t)(?:\s+score)?\b[\s:=*_\-(]*(\d+(?:\.\d+)?)", re.IGNORECASE)


def parse_choice_select(text: str) -> list[int]:
    """The 1-based document numbers of a choice-select answer, most relevant first.

    Each ``Doc: 9, Relevance: 7`` is read wherever it stands (prose, markdown, several on a line,
    the relevance on the lines below its document, ``Document 9``, ``relevance score 7/10``, a
    reason after it); documents are ordered by their
    relevance, highest first, ties and documents named without a relevance (after the rated ones)
    in the order the answer names them. Out-of-range numbers and repeats are left for
    :func:`~rerankers_plugins.ops.permutation.repair_permutation` to drop and count.

    >>> parse_choice_select("Doc: 9, Relevance: 7\\nDoc: 3, Relevance: 8\\nDoc: 2")
    [3, 9, 2]
    >>> parse_choice_select("**Document 4** (relevance score: 6/10), Doc 1, Relevance: 9, because...")
    [1, 4]
    >>> parse_choice_select("None of the documents are relevant.")
    []
    """
    if not isinstance(text, str):
        return []
    found: list[tuple[float, int, int]] = []
    docs = list(_DOC.finditer(text))
    for i, m in enumerate(docs):
        # its relevance is read up to the next document, on its line or below it
        stop = docs[i + 1].start() if i + 1 < len(docs) else len(text)
        rel = _RELEVANCE.search(text, m.end(), stop)
        found.append((-float(rel.group(1)) if rel else float("inf"), i, int(m.group(1))))
    return [doc for _, _, doc in sorted(found)]
