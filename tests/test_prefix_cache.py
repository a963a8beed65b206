"""Kept KV caches: a follow-up reuses its conversation's cache and answers exactly as a cold run.

The tiny random models attend almost uniformly, so wrong positions would barely move their
logits; here their attention is sharpened (q and k scaled) so that a position or cache mistake
changes the greedy tokens. Every cached answer is compared with plain `generate` on the whole
prompt, as the Qwen2-VL README runs it (no cache, no positions given).
"""

from __future__ import annotations

import threading

import pytest
import torch
from PIL import Image

from app.config import Settings
from app.engine import ChatRequest, GenerationOptions, worker
from app.engine.local import LocalEngine
from app.engine.prefix_cache import PrefixCache, reusable_length, vision_blocks
from tests.uploads import clip, part, picture

TOKENS = 8


def sharpen(model, factor: float = 8.0) -> None:
    """Scales queries and keys (Qwen3's: after their RMSNorm, which would undo a scaled
    projection); Qwen3.5's linear-attention layers are left as they are."""
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            attention = getattr(layer, "self_attn", None)
            if attention is None:
                continue
            if hasattr(attention, "q_norm"):
                attention.q_norm.weight.mul_(factor)
                attention.k_norm.weight.mul_(factor)
                continue
            for projection in (attention.q_proj, attention.k_proj):
                projection.weight.mul_(factor)
                if projection.bias is not None:
                    projection.bias.mul_(factor)


def make_engine(checkpoint) -> LocalEngine:
    settings = Settings(checkpoint_path=str(checkpoint), cpu_only=True, prefix_cache_mb=64)
    engine = LocalEngine(settings).start(background=False)
    sharpen(engine.model)
    return engine


@pytest.fixture(scope="module")
def engine(tiny_checkpoint) -> LocalEngine:
    return make_engine(tiny_checkpoint)


def user(*parts) -> dict:
    content = [p if isinstance(p, dict) else {"type": "text", "text": p} for p in parts]
    return {"role": "user", "content": content}


def request(messages: list[dict], client: str = "ann", tokens: int = TOKENS) -> ChatRequest:
    return ChatRequest(messages, GenerationOptions(max_new_tokens=tokens), client=client)


def run(engine: LocalEngine, req: ChatRequest, stop_after: int | None = None) -> tuple[str, int]:
    """(answer text, prompt tokens taken from a kept cache)."""
    text, tokens, cached = "", 0, None
    stream = engine.stream(req)
    for delta in stream:
        text += delta.text
        tokens += delta.tokens
        cached = delta.cached_tokens if delta.cached_tokens is not None else cached
        if stop_after is not None and tokens >= stop_after:
            stream.close()
            break
    return text, cached or 0


def cold(engine: LocalEngine, req: ChatRequest) -> str:
    """The answer of plain `generate` on the whole prompt."""
    inputs = engine.encode(req)
    output = engine.model.generate(
        **inputs, max_new_tokens=req.options.max_new_tokens, do_sample=False
    )
    answer = output[0, inputs["input_ids"].shape[1] :]
    text = engine.processor.tokenizer.decode(answer, skip_special_tokens=False)
    return text.replace("<|im_end|>", "").replace("<|endoftext|>", "")


def prompt_length(engine: LocalEngine, req: ChatRequest) -> int:
    return engine.encode(req)["input_ids"].shape[1]


def red() -> dict:
    return part(picture(Image.new("RGB", (56, 84), (200, 30, 30))))


def test_follow_ups_reuse_the_cache_and_answer_as_a_cold_run(engine):
    encoded: list[int] = []  # patches the vision encoder ran on, per call

    def counting(module, args, kwargs):
        encoded.append((args[0] if args else kwargs["hidden_states"]).shape[0])

    turn1 = [user(red(), "What is this?")]
    first, cached = run(engine, request(turn1))
    assert cached == 0 and first == cold(engine, request(turn1))

    hook = engine.model.model.visual.register_forward_pre_hook(counting, with_kwargs=True)
    turn2 = [*turn1, {"role": "assistant", "content": first}, user("And its colour?")]
    second, cached = run(engine, request(turn2))
    assert encoded == [], "the cached picture is not encoded again"
    assert cached >= prompt_length(engine, request(turn1)) - 1, "turn 1's prompt came from cache"
    assert second == cold(engine, request(turn2))

    again, cached = run(engine, request(turn2))  # regenerate: all but the last token cached
    assert cached == prompt_length(engine, request(turn2)) - 1 and again == second

    blue = part(picture(Image.new("RGB", (84, 56), (20, 30, 220))))
    turn3 = [*turn2, {"role": "assistant", "content": second}, user(blue, "And this one?")]
    encoded.clear()  # (cold runs above encoded their pictures)
    third, cached = run(engine, request(turn3))
    assert cached >= prompt_length(engine, request(turn2)) - 1
    assert encoded == [(84 // 14) * (56 // 14)], "only the new picture's patches"
    hook.remove()
    assert third == cold(engine, request(turn3))


def test_an_edited_question_cuts_the_cache_at_the_edit(engine):
    original = [user(red(), "Describe the picture.")]
    answer, _ = run(engine, request(original))
    conversation = [*original, {"role": "assistant", "content": answer}, user("Why?")]
    run(engine, request(conversation))
    edited = [user(red(), "Describe the picture in French."), *conversation[1:]]
    text, cached = run(engine, request(edited))
    assert 0 < cached < prompt_length(engine, request(original)), "cut inside turn 1's text"
    assert text == cold(engine, request(edited))


def test_a_same_size_picture_is_not_taken_for_another(engine):
    green = part(picture(Image.new("RGB", (56, 84), (20, 200, 30))))
    run(engine, request([user(red(), "Which colour?")]))
    text, cached = run(engine, request([user(green, "Which colour?")]))
    first_image = vision_blocks(engine.encode(request([user(green, "?")]))["mm_token_type_ids"])
    assert cached <= first_image[0][0], "the cache stops before the picture that differs"
    assert text == cold(engine, request([user(green, "Which colour?")]))


def test_after_stop_the_partial_answer_is_a_prefix_too(engine):
    turn1 = [user(red(), "Tell me a story.")]
    partial, _ = run(engine, request(turn1, tokens=40), stop_after=3)
    follow_up = [*turn1, {"role": "assistant", "content": partial}, user("Go on.")]
    text, cached = run(engine, request(follow_up))
    assert cached >= prompt_length(engine, request(turn1)) - 1
    assert text == cold(engine, request(follow_up))


def test_a_video_conversation_and_turns_left_out(engine):
    video = part(clip((56, 56), frames=8, rate=2))
    turn1 = [user(video, "What happens?")]
    first, _ = run(engine, request(turn1))
    turn2 = [*turn1, {"role": "assistant", "content": first}, user("And then?")]
    second, cached = run(engine, request(turn2))
    assert cached >= prompt_length(engine, request(turn1)) - 1
    assert second == cold(engine, request(turn2))
    left_out = turn2[2:]  # the budget left turn 1 out: a new prefix after the system prompt
    text, _ = run(engine, request(left_out))
    assert text == cold(engine, request(left_out))


def test_a_long_prompt_is_prefilled_in_chunks_with_the_same_answer(engine, monkeypatch):
    monkeypatch.setattr(worker, "PREFILL_CHUNK_TOKENS", 16)
    widths: list[int] = []  # tokens per call of the language model

    def counting(module, args, kwargs):
        widths.append(kwargs["inputs_embeds"].shape[1])

    turn = [user(red(), "Describe the picture, its colours and its shape, in detail.")]
    hook = engine.model.model.language_model.register_forward_pre_hook(counting, with_kwargs=True)
    text, cached = run(engine, request(turn, client="chunks"))
    hook.remove()
    prefill = [width for width in widths if width > 1]
    assert cached == 0 and len(prefill) >= 2 and max(prefill) <= 16, widths
    assert sum(prefill) == prompt_length(engine, request(turn)) - 1, "every prompt token once"
    assert text == cold(engine, request(turn))


def test_another_client_never_hits(engine):
    turn1 = [user(red(), "A private question")]
    run(engine, request(turn1, client="ann"))
    _, cached = run(engine, request(turn1, client="bob"))
    assert cached == 0


def test_rows_of_one_batch_each_continue_their_own_cache(engine):
    conversations = {}
    for name, colour in (("a", (250, 0, 0)), ("b", (0, 0, 250))):
        image = part(picture(Image.new("RGB", (56, 56), colour)))
        turn1 = [user(image, f"Conversation {name}?")]
        answer, _ = run(engine, request(turn1, client=name))
        conversations[name] = [*turn1, {"role": "assistant", "content": answer}, user("More?")]
    worker = engine._worker
    before = worker.batch_sizes[2]
    holding = threading.Event()

    def hold() -> None:  # keeps the worker busy while the two follow-ups queue up together
        for delta in engine.stream(request([user("Hold")], client="c", tokens=60)):
            holding.set() if delta.tokens else None

    blocker = threading.Thread(target=hold)
    blocker.start()
    assert holding.wait(60)
    results: dict = {}
    threads = [
        threading.Thread(target=lambda n=n, c=c: results.__setitem__(n, run(engine, request(c, n))))
        for n, c in conversations.items()
    ]
    for thread in threads:
        thread.start()
    for thread in [blocker, *threads]:
        thread.join(timeout=120)
    assert worker.batch_sizes[2] > before, "the two follow-ups ran as one batch"
    for name, conversation in conversations.items():
        text, cached = results[name]
        assert cached > 0 and text == cold(engine, request(conversation, name))


def test_qwen2_5_vl_with_a_video(tiny_checkpoint_25):
    engine = make_engine(tiny_checkpoint_25)
    video = part(clip((56, 56), frames=8, rate=1))
    turn1 = [user("Hello"), {"role": "assistant", "content": "Hi."}, user(video, "What is it?")]
    first, _ = run(engine, request(turn1))
    assert first == cold(engine, request(turn1))
    turn2 = [*turn1, {"role": "assistant", "content": first}, user("Why?")]
    second, cached = run(engine, request(turn2))
    assert cached >= prompt_length(engine, request(turn1)) - 1
    assert second == cold(engine, request(turn2))


def test_qwen3_vl_follow_ups_with_a_new_picture(tiny_checkpoint_3):
    engine = make_engine(tiny_checkpoint_3)
    red = part(picture(Image.new("RGB", (64, 96), (200, 30, 30)), geometry=engine.geometry))
    turn1 = [user(red, "What is this?")]
    first, _ = run(engine, request(turn1))
    assert first == cold(engine, request(turn1))
    blue = Image.new("RGB", (96, 64), (20, 30, 220))
    blue = part(picture(blue, geometry=engine.geometry))
    turn2 = [*turn1, {"role": "assistant", "content": first}, user(blue, "And this one?")]
    second, cached = run(engine, request(turn2))
    assert cached >= prompt_length(engine, request(turn1)) - 1, "turn 1 came from the cache"
    assert second == cold(engine, request(turn2))


def test_qwen3_5_runs_without_kept_caches_and_says_so(tiny_checkpoint_35, caplog):
    with caplog.at_level("INFO", logger="app.engine.local"):
        engine = make_engine(tiny_checkpoint_35)
    assert "prefix cache off" in caplog.text and engine._worker.prefix_cache is None
    red = part(picture(Image.new("RGB", (64, 96), (200, 30, 30)), geometry=engine.geometry))
    turn1 = [user(red, "What is this?")]
    first, cached = run(engine, request(turn1))
    turn2 = [*turn1, {"role": "assistant", "content": first}, user("Why?")]
    second, cached = run(engine, request(turn2))
    assert cached == 0 and second == cold(engine, request(turn2))


def test_the_store_is_bounded_and_keeps_the_most_recent(engine):
    from app.engine.prefix_cache import Kept, from_tensors

    def entry(scope: str, ids: list[int]) -> Kept:
        k = torch.zeros(1, 1, len(ids), 4)
        return Kept(scope, ids, [], from_tensors([(k, k.clone())]))

    store = PrefixCache(capacity_bytes=3 * 2 * 4 * 4 * 4)  # three 4-position entries
    for scope in "abcd":
        store.keep(entry(scope, [1, 2, 3, 4]))
    assert len(store) == 3 and store.size <= store.capacity
    assert store.lookup("a", [1, 2, 3, 4, 5], [], [])[1] == 0, "the oldest went first"
    assert store.lookup("d", [1, 2, 3, 4, 5], [], [])[1] == 4
    store.keep(entry("d", [1, 2, 3, 4, 5, 6]))  # replaces d's shorter entry; b makes room
    assert len(store) == 2 and store.size <= store.capacity
    assert store.lookup("d", [1, 2, 3, 4, 5, 6, 7], [], [])[1] == 6
    assert store.lookup("b", [1, 2, 3, 4, 5], [], [])[1] == 0


def test_reusable_length_rules():
    from app.engine.prefix_cache import Kept, from_tensors

    k = torch.zeros(1, 1, 10, 4)
    kept = Kept("a", [1, 2, 9, 9, 9, 3, 4, 5, 6, 7], ["cat"], from_tensors([(k, k)]))
    blocks = [(2, 5)]
    assert reusable_length(kept, [1, 2, 9, 9, 9, 3, 4, 5, 0], blocks, ["cat"]) == 8
    assert reusable_length(kept, [1, 2, 9, 9, 9, 3, 4, 5, 0], blocks, ["dog"]) == 2
    assert reusable_length(kept, [1, 2, 9, 9, 8, 3], [(2, 5)], ["cat"]) == 2, "whole images only"
    assert reusable_length(kept, kept.ids, blocks, ["cat"]) == 9, "one token is left to run"
