"""Reasoning in an answer: thinking models write `<think>…</think>` before the answer.

Qwen3-VL-Thinking and Qwen3.5 templates open the `<think>` block in the prompt, so the answer
usually starts inside it, without the opening tag; other models may write both tags. Pure
functions over the raw text as it streams: a half-written closing tag is never shown.
Gradio's own `reasoning_tags` needs the opening tag, hence this module.
"""

from __future__ import annotations

from dataclasses import dataclass

OPEN, CLOSE = "<think>", "</think>"


@dataclass(frozen=True)
class Split:
    """An answer's reasoning (None: it has none) and the answer after it; `thinking` while the
    reasoning block is still open."""

    reasoning: str | None
    answer: str
    thinking: bool = False


def split_reasoning(raw: str, opened: bool = False) -> Split:
    """Reasoning and answer of a raw answer; `opened`: the prompt opened a `<think>` block."""
    text = raw.lstrip()
    if text.startswith(OPEN):
        text, opened = text[len(OPEN) :], True
    if not opened:  # a stray closing tag in an ordinary answer is just text
        return Split(None, raw)
    if CLOSE in text:
        reasoning, answer = text.split(CLOSE, 1)
        return Split(reasoning.strip(), answer.lstrip())
    return Split(_without_partial_close(text).strip(), "", thinking=True)


def _without_partial_close(text: str) -> str:
    """The text without a trailing beginning of `</think>` (it may be completed next)."""
    for length in range(len(CLOSE) - 1, 0, -1):
        if text.endswith(CLOSE[:length]):
            return text[:-length]
    return text
