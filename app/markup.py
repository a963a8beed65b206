"""Text as the chat displays it: users' text exactly as typed, models' Markdown made inert.

Gradio's chat renders every message as Markdown and lets much HTML through its sanitizer (inline
styles that cover the page, forms, outside images, SVG links). So, for display only:
- a user's text is shown as typed: HTML-escaped inside `<pre class="user-text">` (Markdown and
  LaTeX leave a <pre> alone; CSS keeps its line breaks and font);
- a model's (or a notice's) text keeps its Markdown, code, tables and LaTeX, but `&` and `<`
  outside code are written as entities, so no HTML tag survives, and `![` too, so no Markdown
  image loads anything (the text shows as written).
Both transforms are exactly reversed (`typed_user_text`, `model_text`) for what the browser
sends back, so the history, edits, exports and prompts hold what was typed or generated.
The page's Content-Security-Policy (`app.hosting`) and CSS containment of the bubbles
(`app.ui`) are the layers behind this one.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable

USER_TEXT_OPEN = '<pre class="user-text">'
USER_TEXT_CLOSE = "</pre>"
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})", re.MULTILINE)
_CODE_SPAN = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)", re.DOTALL)
_ENTITY = re.compile(r"&(amp|lt|#91);")
_ENTITIES = {"amp": "&", "lt": "<", "#91": "["}

# The edit box of a user message shows what the browser holds: the escaped <pre>. This head
# script turns it back into the typed text when the box opens (DOMParser parses inertly).
EDIT_BOX_SCRIPT = """<script>
new MutationObserver(() => {
  for (const box of document.querySelectorAll("textarea.edit-textarea")) {
    if (!box.value.startsWith('<pre class="user-text">')) continue;
    const doc = new DOMParser().parseFromString(box.value, "text/html");
    box.value = doc.body.textContent;
    box.dispatchEvent(new Event("input", { bubbles: true }));
  }
}).observe(document.documentElement, { childList: true, subtree: true });
</script>"""


def shown_user_text(text: str) -> str:
    """A user's text as the chat shows it: exactly as typed."""
    return USER_TEXT_OPEN + html.escape(text, quote=False) + USER_TEXT_CLOSE


def typed_user_text(shown: str) -> str:
    """The text a user typed, from what the chat showed (text not in our wrapper is as typed)."""
    if shown.startswith(USER_TEXT_OPEN) and shown.endswith(USER_TEXT_CLOSE):
        return html.unescape(shown[len(USER_TEXT_OPEN) : -len(USER_TEXT_CLOSE)])
    return shown


def inert_markdown(text: str) -> str:
    """Model Markdown that renders its formatting but no HTML and no image: `&`, `<` and the
    `[` of `![` outside code as entities."""
    return _outside_code(
        text, lambda s: s.replace("&", "&amp;").replace("<", "&lt;").replace("![", "!&#91;")
    )


def model_text(shown: str) -> str:
    """The model's text, from what the chat showed (the reverse of `inert_markdown`)."""
    return _outside_code(shown, lambda s: _ENTITY.sub(lambda m: _ENTITIES[m[1]], s))


def _outside_code(text: str, change: Callable[[str], str]) -> str:
    """`change` applied to the text outside fenced code blocks and inline code spans."""
    out: list[str] = []
    position = 0
    while position < len(text):
        fence = _FENCE.search(text, position)
        end_of_prose = fence.start() if fence else len(text)
        out.append(_outside_spans(text[position:end_of_prose], change))
        if fence is None:
            break
        marker = fence.group(1)
        closing = re.compile(
            rf"^ {{0,3}}{re.escape(marker[0])}{{{len(marker)},}}[ \t]*$", re.MULTILINE
        )
        close = closing.search(text, fence.end())
        end = close.end() if close else len(text)
        out.append(text[fence.start() : end])  # a fenced block stays as it is
        position = end
    return "".join(out)


def _outside_spans(prose: str, change: Callable[[str], str]) -> str:
    out: list[str] = []
    position = 0
    for span in _CODE_SPAN.finditer(prose):
        out.append(change(prose[position : span.start()]))
        out.append(span.group(0))
        position = span.end()
    out.append(change(prose[position:]))
    return "".join(out)
