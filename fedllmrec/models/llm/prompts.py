"""The ranking prompt: a chat template filled with titles, with places for soft tokens.

The template (``prompts/llm_rank.toml``) is rendered to one string; each soft token is a
numbered marker in it. The string is cut at the markers, each piece tokenised on its own,
and every marker becomes one placeholder token whose input embedding the caller overwrites
(``inputs_embeds``): no token is added to the vocabulary. Titles are cut to a fixed number
of tokens, the same in the prompt and in the scored continuation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fedllmrec.errors import FedLLMRecError
from fedllmrec.semantics.templates import PROMPTS_DIR, read_prompt_file

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DEFAULT_PROMPT_FILE = PROMPTS_DIR / "llm_rank.toml"
_MARK = re.compile("\x00(\\d+)\x00")
USER = -1  # the soft slot of the user (items are >= 0)


@dataclass(frozen=True)
class RankPrompt:
    """One ranking template (a table of ``prompts/llm_rank.toml``; fields documented there)."""

    system: str
    user: str
    history_item: str
    candidate_item: str
    answer: str
    history_items: int = 10
    title_tokens: int = 24


def load_rank_prompt(path: str | Path | None = None, table: str = "rank") -> RankPrompt:
    """The template ``table`` of ``path`` (default ``prompts/llm_rank.toml``)."""
    path = Path(path) if path is not None else DEFAULT_PROMPT_FILE
    doc = read_prompt_file(path, "prompt file")
    raw = doc.get(table)
    if not isinstance(raw, dict):
        raise FedLLMRecError(f"{path}: no [{table}] table")
    known = {f.name for f in fields(RankPrompt)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise FedLLMRecError(f"{path}: [{table}] unknown field {unknown[0]!r}")
    try:
        prompt = RankPrompt(**raw)
    except TypeError as err:  # a required field is missing
        raise FedLLMRecError(f"{path}: [{table}] {err}") from None
    for name in ("history_items", "title_tokens"):
        if not isinstance(getattr(prompt, name), int) or getattr(prompt, name) < 1:
            raise FedLLMRecError(f"{path}: [{table}] {name} must be a positive integer")
    return prompt


@dataclass(frozen=True)
class EncodedPrompt:
    """A rendered prompt: token ids with one placeholder per soft token.

    ``soft_positions[j]`` is the position of soft slot ``soft_items[j]`` (an item id, or
    :data:`USER` for the user token).
    """

    ids: torch.Tensor  # (P,)
    soft_positions: torch.Tensor  # (S,)
    soft_items: torch.Tensor  # (S,)


class PromptEncoder:
    """Renders and tokenises ranking prompts and candidate continuations.

    Parameters
    ----------
    tokenizer : PreTrainedTokenizerBase
        The LLM's tokenizer (its chat template renders the messages).
    template : RankPrompt
        The ranking template.
    titles : sequence of str
        Every item's title, by item id.
    soft_tokens : bool
        Put a user soft token and one after each title; without, the ``{user}`` and
        ``{item}`` fields are empty.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        template: RankPrompt,
        titles: Sequence[str],
        soft_tokens: bool = False,
    ) -> None:
        self.tokenizer, self.template, self.titles = tokenizer, template, titles
        self.soft_tokens = soft_tokens
        self._title_ids: dict[int, list[int]] = {}

    @cached_property
    def placeholder(self) -> int:
        """The token written at soft positions (its embedding is always overwritten)."""
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id)

    def title_ids(self, item: int) -> list[int]:
        """The item's title as it continues the answer: a leading space, at most
        ``title_tokens`` tokens (an empty title is a single space)."""
        if item not in self._title_ids:
            title = " ".join(str(self.titles[item]).split()) or "(untitled)"
            ids = self.tokenizer(" " + title, add_special_tokens=False).input_ids
            self._title_ids[item] = list(ids[: self.template.title_tokens])
        return self._title_ids[item]

    def title_text(self, item: int) -> str:
        """The cut title as the prompt shows it."""
        return str(self.tokenizer.decode(self.title_ids(item))).strip()

    def continuations(self, items: Sequence[int]) -> list[list[int]]:
        """Token ids of each candidate's continuation."""
        return [self.title_ids(int(i)) for i in items]

    def encode(self, history: Sequence[int], candidates: Sequence[int]) -> EncodedPrompt:
        """The prompt for a user with in-domain ``history`` (oldest first; the last
        ``history_items`` are shown) and ``candidates`` in the order to show them."""
        t = self.template
        slots: list[int] = []

        def soft(item: int) -> str:
            if not self.soft_tokens:
                return ""
            slots.append(item)
            return f" \x00{len(slots) - 1}\x00"

        def lines(form: str, items: Sequence[int]) -> str:
            out = []
            for n, item in enumerate(items, start=1):
                out.append(form.format(title=self.title_text(int(item)), item=soft(int(item)), n=n))
            return "\n".join(out)

        values: dict[str, Any] = {"user": soft(USER)}
        values["history"] = lines(t.history_item, list(history)[-t.history_items :])
        values["candidates"] = lines(t.candidate_item, candidates)
        try:
            user = t.user.format(**values)
        except (KeyError, IndexError) as err:
            raise FedLLMRecError(f"ranking prompt: unknown field {err} in 'user'") from None
        messages = [{"role": "system", "content": t.system}, {"role": "user", "content": user}]
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        text = str(text) + t.answer
        pieces = _MARK.split(text)  # text, slot, text, slot, ..., text
        ids: list[int] = []
        positions: list[int] = []
        items: list[int] = []
        for k, piece in enumerate(pieces):
            if k % 2 == 0:
                ids.extend(self.tokenizer(piece, add_special_tokens=False).input_ids)
            else:
                positions.append(len(ids))
                items.append(slots[int(piece)])
                ids.append(self.placeholder)
        return EncodedPrompt(
            torch.tensor(ids, dtype=torch.long),
            torch.tensor(positions, dtype=torch.long),
            torch.tensor(items, dtype=torch.long),
        )
