"""Continuous batching: the scheduler's plans without a model, then the batched runner on SmolLM2 --
batch invariance (the same text alone and in a batch), several sequences in one forward pass against
each alone, prefix reuse, cancellation, the queue bound, errors."""

from __future__ import annotations

import os

import numpy as np
import pytest

from edgeinfer.engine.batch import BatchRunner
from edgeinfer.engine.kv_cache import KVCache
from edgeinfer.engine.batch import make_runner
from edgeinfer.engine.runner import Finish, InvalidPromptError, PromptTooLongError, QueueFullError, SerialRunner
from edgeinfer.engine.sampling import SamplingParams
from edgeinfer.engine.scheduler import Scheduler, SeqState

# -- the scheduler alone ----------------------------------------------------------------------------------


def test_admits_in_order_up_to_the_slots():
    s = Scheduler(max_active=2, max_queue=5)
    seqs = [SeqState(list(range(5))) for _ in range(4)]
    for q in seqs:
        s.add(q)
    assert s.admit() == seqs[:2] and s.queue_depth == 2
    assert s.admit() == []  # no free slot
    s.remove(seqs[0])
    assert s.admit() == [seqs[2]] and s.active == [seqs[1], seqs[2]]


def test_queue_bound():
    s = Scheduler(max_active=1, max_queue=2)
    s.add(SeqState([1]))
    s.add(SeqState([1]))
    with pytest.raises(QueueFullError):
        s.add(SeqState([1]))


def test_admission_waits_for_kv_blocks_first_come_first_served():
    """With a KV budget, a request is admitted only when its reserved blocks fit beside the running
    ones'; it waits (and the ones behind it wait too) until blocks come back."""
    s = Scheduler(max_active=4, max_queue=5, kv_blocks=10)
    big, small, tiny = SeqState([1], reserve=6), SeqState([1], reserve=5), SeqState([1], reserve=1)
    for q in (big, small, tiny):
        s.add(q)
    assert s.admit() == [big] and s.reserved == 6  # small does not fit; tiny waits behind it
    assert s.admit() == []
    s.remove(big)
    assert s.admit() == [small, tiny] and s.reserved == 6
    with pytest.raises(ValueError):
        Scheduler(max_active=1, kv_blocks=0)


def test_prefill_is_chunked_while_others_decode():
    s = Scheduler(max_active=3, max_queue=4, prefill_chunk=4, step_tokens=16)
    a = SeqState(list(range(10)))
    s.add(a)
    s.admit()
    work = s.plan()  # nobody decodes: the whole prompt (up to step_tokens) at once
    assert [len(w.tokens) for w in work] == [10] and work[0].sample
    s.advance(work)
    a.next_token = 7
    b = SeqState(list(range(100, 110)))
    s.add(b)
    s.admit()
    work = s.plan()  # a decodes one token, b prefills a chunk of 4
    assert [(w.seq, w.tokens, w.sample) for w in work] == [(a, [7], True), (b, [100, 101, 102, 103], False)]
    s.advance(work)
    assert b.n_prefilled == 4 and a.n_prefilled == 10
    s.advance(s.plan())
    work = s.plan()
    assert work[1].tokens == [108, 109] and work[1].sample  # the last chunk samples


def test_step_budget_spreads_over_prompts_oldest_first():
    s = Scheduler(max_active=4, max_queue=4, prefill_chunk=100, step_tokens=12)
    seqs = [SeqState(list(range(8))) for _ in range(3)]
    for q in seqs:
        s.add(q)
    s.admit()
    work = s.plan()
    assert [len(w.tokens) for w in work] == [8, 4]  # 12 tokens this step
    assert [w.sample for w in work] == [True, False]


def test_remove_from_the_queue_and_decoding_without_token_is_an_error():
    s = Scheduler(max_active=1)
    a, b = SeqState([1, 2]), SeqState([3])
    s.add(a)
    s.add(b)
    s.remove(b)
    assert s.queue_depth == 1 and b.done
    s.admit()
    a.n_prefilled = 2
    with pytest.raises(RuntimeError, match="no next token"):
        s.plan()


# -- several sequences in one forward pass ----------------------------------------------------------------


@pytest.fixture(scope="module")
def llm(smollm2_path):
    from edgeinfer.api import load

    return load(smollm2_path, n_ctx=512)


@pytest.fixture(params=["f16", "q8_0", "f32"])
def kv_type(request, llm):
    """The KV format of the caches made in a test (the module's llm goes back to the default after)."""
    llm.model.set_kv_type(request.param)
    yield request.param
    llm.model.set_kv_type("f16")


@pytest.mark.parametrize("lens", [(10, 60), (30, 30, 1), (1, 1, 1, 1), (65, 1)])
def test_forward_many_equals_each_alone_bit_for_bit(llm, lens, kv_type):
    """Batch invariance at the kernel level: each sequence's logits are the same bits in a batch as
    alone (every op computes a row the same way whatever else is in the pass), with K/V in every format."""
    m = llm.model
    assert KVCache.for_model(m, 8).kv_type.name == kv_type
    rng = np.random.default_rng(sum(lens))
    seqs = [rng.integers(0, m.n_vocab, n).astype(np.int32) for n in lens]
    alone = [m.forward(s, KVCache.for_model(m, 128), all_logits=False) for s in seqs]
    caches = [KVCache.for_model(m, 128) for _ in seqs]
    together = m.forward_many(seqs, caches)
    for a, b in zip(alone, together):
        assert np.array_equal(a, b)
    assert [c.n_past for c in caches] == list(lens)
    # every row for some sequences (a speculative one verifying drafts), the last for the others
    every = [i % 2 == 0 for i in range(len(seqs))]
    full = [m.forward(s, KVCache.for_model(m, 128)) for s in seqs]
    mixed = m.forward_many(seqs, [KVCache.for_model(m, 128) for _ in seqs], all_logits=every)
    for f, g, e in zip(full, mixed, every):
        assert np.array_equal(g, f if e else f[-1:])


def test_forward_many_checks_its_arguments(llm):
    m = llm.model
    c = KVCache.for_model(m, 8)
    with pytest.raises(Exception, match="own cache"):
        m.forward_many([np.array([1]), np.array([2])], [c, c])
    other = KVCache.for_model(m, 8)
    from edgeinfer.errors import ContextFullError

    with pytest.raises(ContextFullError):
        m.forward_many([np.array([1, 2]), np.arange(9)], [other, c])
    assert other.n_past == 0 and c.n_past == 0  # nothing was touched
    with pytest.raises(Exception, match="one flag per sequence"):
        m.forward_many([np.array([1])], [other], all_logits=[True, False])


# -- the batched runner -----------------------------------------------------------------------------------

QUESTIONS = ["Hi", "What is 2+2?", "Name three colors.", "Why is the sky blue?", "Count to five."]


def _prompt(llm, q, system="You are a helpful assistant."):
    return llm.tokenize_chat([{"role": "system", "content": system}, {"role": "user", "content": q}])


def _collect(handle, timeout=120):
    text, fin = "", None
    for ev in handle.events_sync(timeout=timeout):
        if isinstance(ev, Finish):
            fin = ev
        else:
            text += ev
    return text, fin


def test_batched_text_equals_alone(llm):
    """At temperature 0 a request's text is the same whether it ran alone or beside four others."""
    greedy = SamplingParams(temperature=0)
    alone = []
    serial = SerialRunner(llm)
    serial.start()
    for q in QUESTIONS:
        alone.append(_collect(serial.submit(_prompt(llm, q), greedy, 24)))
    serial.stop()
    runner = BatchRunner(llm, parallel=4, prefill_chunk=16)
    runner.start()
    try:
        handles = [runner.submit(_prompt(llm, q), greedy, 24) for q in QUESTIONS]
        together = [_collect(h) for h in handles]
    finally:
        runner.stop()
    for (t1, f1), (t2, f2) in zip(alone, together):
        assert t2 == t1 and f2.reason == f1.reason and f2.n_generated == f1.n_generated
    stats = runner.stats()
    assert stats["requests_finished"] == {"stop": 5} or sum(stats["requests_finished"].values()) == 5
    assert stats["prefix_tokens_reused"] > 0  # the shared system prompt was not computed again
    assert stats["active"] == 0 and stats["queue_depth"] == 0


def test_seeds_are_per_sequence(llm):
    """Sampling at temperature 1 with a seed gives the same text alone and in a batch."""
    p = SamplingParams(temperature=1.0, seed=42)
    runner = make_runner(llm, parallel=3)
    runner.start()
    try:
        first = _collect(runner.submit(_prompt(llm, "Tell me a story."), p, 16))[0]
        hs = [runner.submit(_prompt(llm, q), SamplingParams(temperature=1.0, seed=i), 16) for i, q in enumerate(QUESTIONS[:2])]
        again = runner.submit(_prompt(llm, "Tell me a story."), p, 16)
        assert _collect(again)[0] == first
        for h in hs:
            _collect(h)
    finally:
        runner.stop()


def test_cancel_frees_the_slot(llm):
    runner = BatchRunner(llm, parallel=1)
    runner.start()
    try:
        long = runner.submit(_prompt(llm, "Write a long essay about the sea."), SamplingParams(temperature=0), 400)
        first = next(long.events_sync(timeout=60))
        assert isinstance(first, str)
        long.cancel()
        text, fin = _collect(long)
        assert fin.reason == "cancelled"
        t, f = _collect(runner.submit(_prompt(llm, "Hi"), SamplingParams(temperature=0), 8))
        assert f.reason in ("stop", "length") and t
    finally:
        runner.stop()


def test_queue_full_and_prompt_too_long(llm):
    runner = BatchRunner(llm, parallel=1, max_queue=1)
    with pytest.raises(PromptTooLongError, match="context holds 512"):
        runner.submit(list(range(1, 600)), SamplingParams(), 4)
    with pytest.raises(InvalidPromptError, match="empty"):
        runner.submit([], SamplingParams(), 4)
    with pytest.raises(InvalidPromptError, match="token id 49152, outside the vocabulary"):
        runner.submit([1, 2, 49152], SamplingParams(), 4)
    with pytest.raises(InvalidPromptError, match="token id -1"):
        SerialRunner(llm).submit([-1], SamplingParams(), 4)
    # not started: the first request waits in the queue, the second finds it full
    h = runner.submit(_prompt(llm, "Hi"), SamplingParams(temperature=0), 4)
    with pytest.raises(QueueFullError) as e:
        runner.submit(_prompt(llm, "Hi"), SamplingParams(temperature=0), 4)
    assert e.value.retry_after_s == 1.0  # nothing finished yet: no estimate, the floor
    runner._mean_request_s = 7.5  # requests took 7.5 s lately: one ahead, one slot
    with pytest.raises(QueueFullError, match="about 8 s") as e:
        runner.submit(_prompt(llm, "Hi"), SamplingParams(temperature=0), 4)
    assert e.value.retry_after_s == 7.5
    runner.start()
    try:
        assert _collect(h)[1].reason in ("stop", "length")
    finally:
        runner.stop()


def test_stop_strings_and_length(llm):
    runner = BatchRunner(llm, parallel=2)
    runner.start()
    try:
        text, fin = _collect(runner.submit(_prompt(llm, "Count from 1 to 10, separated by commas."), SamplingParams(temperature=0), 64, stop=["5"]))
        assert "5" not in text and fin.reason == "stop"
        text, fin = _collect(runner.submit(_prompt(llm, "Why is the sky blue?"), SamplingParams(temperature=0), 3))
        assert fin.reason == "length" and fin.n_generated == 3
    finally:
        runner.stop()


def test_async_events(llm):
    import asyncio

    runner = make_runner(llm, parallel=2)
    runner.start()

    async def main():
        loop = asyncio.get_running_loop()
        hs = [runner.submit(_prompt(llm, q), SamplingParams(temperature=0), 8, loop=loop) for q in QUESTIONS[:2]]

        async def read(h):
            out = []
            async for ev in h.events():
                out.append(ev)
            return out

        return await asyncio.gather(*(read(h) for h in hs))

    try:
        results = asyncio.run(main())
    finally:
        runner.stop()
    for events in results:
        assert isinstance(events[-1], Finish) and all(isinstance(e, str) for e in events[:-1])


def test_paged_pool_memory_follows_tokens_and_shares_prefixes(llm):
    """Sequences take blocks from one pool as their tokens arrive and give them back (or keep them for
    prefix reuse, dropped when the pool runs short); a shared system prompt is held once (its full blocks
    shared by reference); a pool too small for two requests at once runs them one after the other, with
    the same text as alone."""
    greedy = SamplingParams(temperature=0)
    system = "You are a helpful assistant. Answer in one short sentence, and be precise and polite. " * 6
    prompts = [_prompt(llm, q, system) for q in QUESTIONS[:3]]
    serial = SerialRunner(llm)
    serial.start()
    alone = [_collect(serial.submit(p, greedy, 12))[0] for p in prompts]
    serial.stop()

    runner = BatchRunner(llm, parallel=3, prefill_chunk=32)
    pool = runner.pool
    assert pool.n_cells >= 3 * 512 and pool.n_used == 0
    runner.start()
    try:
        texts = [_collect(runner.submit(prompts[0], greedy, 12))[0]]
        assert pool.n_used == -(-(len(prompts[0]) + 11) // pool.block_size)  # kept for prefix reuse
        handles = [runner.submit(p, greedy, 12) for p in prompts[1:]]  # these two start from its prefix
        texts += [_collect(h)[0] for h in handles]
        assert texts == alone
        stats = runner.stats()
        common = [len(os.path.commonprefix([prompts[0], p])) for p in prompts[1:]]
        assert min(common) >= 3 * pool.block_size
        assert stats["prefix_tokens_reused"] == sum(common)  # the system prompt, not computed again
        # what is held now: the kept caches of the three, their shared prefix counted once
        held = sum(-(-(len(p) + 11) // pool.block_size) for p in prompts)
        assert 0 < pool.n_used < held
        assert stats["kv_blocks_used"] == pool.n_used and stats["kv_bytes_used"] == pool.n_used * pool.block_nbytes
        assert stats["kv_bytes_total"] == pool.n_cells * llm.kv_bytes_per_token() and pool.kv_type.name == "f16"
        assert stats["kv_blocks_reserved"] == 0
    finally:
        runner.stop()

    need = -(-(max(len(p) for p in prompts) + 12) // 32)  # blocks one request reserves
    small = BatchRunner(llm, parallel=3, kv_cells=(need + 1) * 32)  # room for one request at a time
    small.start()
    try:
        handles = [small.submit(p, greedy, 12) for p in prompts]
        got = [_collect(h) for h in handles]
        assert [t for t, _ in got] == alone
        assert all(f.reason in ("stop", "length") for _, f in got)
        assert got[2][1].queued_s > got[0][1].queued_s  # the third waited for blocks, not for a slot
    finally:
        small.stop()
    with pytest.raises(PromptTooLongError, match="KV cache holds"):
        BatchRunner(llm, parallel=1, kv_cells=64).submit(list(range(1, 100)), greedy, 4)


def test_speculation_inside_the_batch_gives_the_same_text(smollm2_path):
    """Per-request speculation (n-gram, and a draft model: here the model drafting for itself, every
    draft accepted) inside the continuous batch: at temperature 0 each request's text is the one plain
    decoding gives, beside plain requests; with a seed at temperature 1 the text is reproducible. Stops
    and max_tokens end a run of accepted drafts at exactly the right token."""
    from edgeinfer.api import load

    llm = load(smollm2_path, n_ctx=512, draft=smollm2_path)
    text = "The quick brown fox jumps over the lazy dog. A stitch in time saves nine."
    prompts = [_prompt(llm, f"Repeat this text exactly: {text}"), _prompt(llm, "Why is the sky blue?"),
               _prompt(llm, f"Repeat exactly: {text} {text}")]  # fmt: skip
    greedy = SamplingParams(temperature=0)
    plain = BatchRunner(llm, parallel=3)
    plain.start()
    try:
        want = [_collect(plain.submit(p, greedy, 40)) for p in prompts]
        want_stop = _collect(plain.submit(prompts[0], greedy, 40, stop=["lazy"]))
        want_short = _collect(plain.submit(prompts[2], greedy, 7))
    finally:
        plain.stop()
    runner = BatchRunner(llm, parallel=3)
    runner.start()
    try:
        for modes in (["ngram", None, "ngram"], ["draft", "draft", None]):
            hs = [runner.submit(p, greedy, 40, speculative=m) for p, m in zip(prompts, modes)]
            got = [_collect(h) for h in hs]
            assert [t for t, _ in got] == [t for t, _ in want]
            assert [f.n_generated for _, f in got] == [f.n_generated for _, f in want]
        for mode in ("ngram", "draft"):
            t, f = _collect(runner.submit(prompts[0], greedy, 40, stop=["lazy"], speculative=mode))
            assert (t, f.reason, f.n_generated) == (want_stop[0], "stop", want_stop[1].n_generated)
            t, f = _collect(runner.submit(prompts[2], greedy, 7, speculative=mode))
            assert (t, f.reason, f.n_generated) == (want_short[0], "length", 7)
        stats = runner.stats()
        assert stats["spec_drafted_tokens_total"] > 0 and 0 < stats["spec_accepted_tokens_total"] <= stats["spec_drafted_tokens_total"]
        seeded = SamplingParams(temperature=1.0, seed=7)
        a = _collect(runner.submit(prompts[1], seeded, 24, speculative="draft"))[0]
        b = _collect(runner.submit(prompts[1], seeded, 24, speculative="draft"))[0]
        assert a == b
    finally:
        runner.stop()
    with pytest.raises(Exception, match="needs a draft model"):
        BatchRunner(load(smollm2_path, n_ctx=64)).submit([1, 2], greedy, 4, speculative="draft")
    with pytest.raises(Exception, match="speculative must be"):
        runner.submit([1, 2], greedy, 4, speculative="yes")
