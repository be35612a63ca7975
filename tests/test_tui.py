"""`edgeinfer chat`: the Textual app (tui/, installed as edgeinfer.tui) driven through Textual's own harness
(App.run_test + Pilot).

Most tests use a tiny random llama written here with a byte-level vocabulary of printable ASCII, so any
English text tokenizes and replies are random printable characters (the special tokens' output rows are
zero, so a reply rarely ends early); one test checks the real SmolLM2 at temperature 0 against llm.chat.
Each test is a plain function that runs its coroutine with asyncio.run (no pytest-asyncio needed).
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time
from types import SimpleNamespace

import gguf
import numpy as np
import pytest

pytest.importorskip("textual")

from edgeinfer.api import load  # noqa: E402
from edgeinfer.tui import app as tui_app  # noqa: E402
from edgeinfer.tui.app import AssistantTurn, ChatApp, ChatInput, Notice, ReplyResult, UserTurn  # noqa: E402
from edgeinfer.tui.conversation import SettingError, draft_acceptance, load_conversation, parse_setting  # noqa: E402
from edgeinfer.tui.screens import HelpScreen, InfoScreen, SettingsScreen  # noqa: E402

SIZE = (110, 36)


# -- a tiny chat model ---------------------------------------------------------------------------------


def write_chat_model(path, seed: int = 0, n_embd: int = 64, n_layer: int = 2, n_ff: int = 128):
    """A random llama with a gpt2-style byte-level vocabulary: <|im_start|>, <|im_end|> (EOS), then
    newline, space and printable ASCII. The built-in ChatML template applies."""
    rng = np.random.default_rng(seed)
    chars = [chr(0x10A), chr(0x120)] + [chr(b) for b in range(33, 127)]  # GPT-2's bytes for \n, space
    tokens = ["<|im_start|>", "<|im_end|>"] + chars
    n_vocab, n_head, n_head_kv = len(tokens), 4, 2
    head_dim = n_embd // n_head
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_string("general.name", "tiny chat")
    for key, value in (("context_length", 2048), ("embedding_length", n_embd), ("block_count", n_layer),
                       ("feed_forward_length", n_ff), ("attention.head_count", n_head),
                       ("attention.head_count_kv", n_head_kv), ("rope.dimension_count", head_dim)):  # fmt: skip
        w.add_uint32("llama." + key, value)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_string("tokenizer.ggml.pre", "default")
    w.add_array("tokenizer.ggml.tokens", tokens)
    w.add_array("tokenizer.ggml.token_type", [3, 3] + [1] * len(chars))
    w.add_array("tokenizer.ggml.merges", ["a b"])
    w.add_uint32("tokenizer.ggml.bos_token_id", 0)
    w.add_uint32("tokenizer.ggml.eos_token_id", 1)
    w.add_bool("tokenizer.ggml.add_bos_token", False)

    def tensor(name, *shape, std=None, mean=0.0):
        std = 1.0 / math.sqrt(shape[-1]) if std is None else std
        w.add_tensor(name, rng.normal(mean, std, shape).astype(np.float32))

    tensor("token_embd.weight", n_vocab, n_embd, std=1.0)
    out = rng.normal(0.0, 3.0 / math.sqrt(n_embd), (n_vocab, n_embd)).astype(np.float32)
    out[:2] = 0.0  # the special tokens' logits stay 0: replies run to max_tokens (nearly always)
    w.add_tensor("output.weight", out)
    tensor("output_norm.weight", n_embd, std=0.1, mean=1.0)
    for il in range(n_layer):
        b = f"blk.{il}."
        tensor(b + "attn_norm.weight", n_embd, std=0.1, mean=1.0)
        tensor(b + "attn_q.weight", n_embd, n_embd)
        tensor(b + "attn_k.weight", n_head_kv * head_dim, n_embd)
        tensor(b + "attn_v.weight", n_head_kv * head_dim, n_embd)
        tensor(b + "attn_output.weight", n_embd, n_embd)
        tensor(b + "ffn_norm.weight", n_embd, std=0.1, mean=1.0)
        tensor(b + "ffn_gate.weight", n_ff, n_embd)
        tensor(b + "ffn_up.weight", n_ff, n_embd)
        tensor(b + "ffn_down.weight", n_embd, n_ff)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return write_chat_model(tmp_path_factory.mktemp("tui") / "tiny-chat.gguf")


@pytest.fixture(scope="module")
def tiny(tiny_path):
    return load(tiny_path, n_ctx=512, progress=False)


class SlowLLM:
    """The same model, its reply pieces delayed, so that a test can stop one mid-stream."""

    def __init__(self, llm, delay: float):
        self._llm, self.delay = llm, delay

    def __getattr__(self, name):
        return getattr(self._llm, name)

    def chat(self, messages, **kwargs):
        pieces = self._llm.chat(messages, **kwargs)

        def slow():
            for piece in pieces:
                time.sleep(self.delay)
                yield piece

        return slow()


# -- helpers -------------------------------------------------------------------------------------------


def run(coro):
    return asyncio.run(coro)


async def wait_for(pilot, condition, timeout: float = 30.0, what: str = "the condition"):
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


async def reply_done(app, pilot):
    await wait_for(pilot, lambda: not app.generating, what="the reply")
    await app.workers.wait_for_complete()
    await pilot.pause()


async def type_and_send(pilot, text: str):
    keys = {" ": "space", "\n": "ctrl+j"}
    await pilot.press(*[keys.get(c, c) for c in text])
    await pilot.press("enter")


async def command(app, pilot, line: str):
    app.query_one(ChatInput).load_text(line)
    await pilot.press("enter")
    await pilot.pause()


def notices(app, kind: str | None = None) -> list[str]:
    return [str(n.render()) for n in app.query(Notice) if kind is None or n.has_class(kind)]


def shown_turns(app):
    return [w for w in app.query(".turn") if not w.has_class("dropped")]


def new_app(llm, **kwargs) -> ChatApp:
    return ChatApp(llm=llm, warmup=False, **kwargs)


# -- tests ---------------------------------------------------------------------------------------------


def test_type_a_question_and_see_the_streamed_answer(tiny_path, monkeypatch):
    monkeypatch.setattr(tui_app, "POST_INTERVAL_S", 0.0)  # every piece on its own: count them

    class Counting(ChatApp):
        pieces = 0

        def on_reply_piece(self, message):  # Textual runs ChatApp's handler as well (it walks the MRO)
            Counting.pieces += 1

    async def go():
        app = Counting(str(tiny_path), n_ctx=512, params={"max_tokens": 40, "seed": 1})
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.llm is not None or app.load_error, what="the model to load")
            assert app.load_error is None and "is ready" in notices(app, "ready")[0]
            await type_and_send(pilot, "Hello, who are you?\nTell me.")
            assert app.generating or app.last_result is not None  # the reply runs in a worker
            await reply_done(app, pilot)
            messages = app.session.messages
            assert [m["role"] for m in messages] == ["user", "assistant"]
            assert messages[0]["content"] == "Hello, who are you?\nTell me."
            reply = messages[1]["content"]
            assert reply and app.llm.last_stats.n_generated == 40
            user, answer = app.query(UserTurn).last(), app.query(AssistantTurn).last()
            assert str(user.render()) == messages[0]["content"]
            assert answer.source == reply  # the Markdown view holds exactly the streamed text
            assert "40 tokens" in answer.border_subtitle
            assert Counting.pieces > 5  # it arrived piece by piece
            assert app.query_one(ChatInput).text == ""

    run(go())


def test_stop_mid_stream_keeps_the_app_usable(tiny):
    slow = SlowLLM(tiny, delay=0.01)

    async def go():
        app = new_app(slow, params={"max_tokens": 400, "seed": 3})
        async with app.run_test(size=SIZE) as pilot:
            app.send("Write something long.")
            await wait_for(pilot, lambda: len(app.query(AssistantTurn).last().source) > 5, what="some text")
            assert app.check_action("stop", ()) and not app.check_action("regenerate", ())  # the footer's keys
            await pilot.press("escape")
            await reply_done(app, pilot)
            first = app.last_result
            assert first.stopped and first.error is None
            assert 0 < first.stats.n_generated < 400
            assert "stopped" in app.query(AssistantTurn).last().border_subtitle
            assert not app.check_action("stop", ()) and app.check_action("regenerate", ())
            assert app.session.messages[-1] == {"role": "assistant", "content": first.text}
            # Ctrl+C stops a reply too, and does not quit
            app.send("And again.")
            await wait_for(pilot, lambda: len(app.query(AssistantTurn).last().source) > 5, what="some text")
            await pilot.press("ctrl+c")
            await reply_done(app, pilot)
            assert app.is_running and app.last_result.stopped and app.last_result.stats.n_generated < 400
            # the next question gets a whole reply
            await command(app, pilot, "/max_tokens 8")
            app.send("A short one now.")
            await reply_done(app, pilot)
            assert not app.last_result.stopped and app.last_result.stats.n_generated == 8
            assert [m["role"] for m in app.session.messages] == ["user", "assistant"] * 3
            # Ctrl+C with nothing running: a reminder, still running
            await pilot.press("ctrl+c")
            await pilot.pause()
            assert app.is_running

    run(go())


def test_status_bar_after_a_reply(tiny):
    async def go():
        app = new_app(tiny, params={"max_tokens": 12})
        async with app.run_test(size=SIZE) as pilot:
            assert "ctx 0/512" in app.status_text()
            app.send("How fast are you?")
            await reply_done(app, pilot)
            stats = app.last_result.stats
            used = len(tiny.tokenize_chat(app.session.for_model(), add_generation_prompt=False))
            status = str(app.query_one("#status").render())
            assert f"ctx {used}/512" in status
            rates = f"prompt {tui_app.format_rate(stats.pp_tps)} · gen {tui_app.format_rate(stats.tg_tps)} tok/s"
            assert rates in status
            source = app.last_result.energy_source
            assert source and app.last_result.joules is not None
            assert f"tok/J ({source})" in status
            assert "draft" not in status
            # speculative decoding's figures, when the stats carry them
            app.last_result = ReplyResult(1, "x", SimpleNamespace(pp_tps=100.0, tg_tps=50.0, n_generated=10,
                                                                  n_drafted=40, n_accepted=30), False, None, 2.0,
                                          "estimate")  # fmt: skip
            assert "draft 75% accepted" in app.status_text() and "5.0 tok/J (estimate)" in app.status_text()
            assert draft_acceptance(SimpleNamespace(n_drafted=0)) is None

    run(go())


def test_settings_apply(tiny):
    async def go():
        app = new_app(tiny)
        async with app.run_test(size=SIZE) as pilot:
            await command(app, pilot, "/set temperature 0")
            await command(app, pilot, "/set max_tokens 5")
            assert app.session.params["temperature"] == 0.0 and app.session.params["max_tokens"] == 5
            app.send("Count to ten.")
            await reply_done(app, pilot)
            assert tiny.last_stats.n_generated <= 5
            reply = app.session.messages[-1]["content"]
            assert reply == tiny.chat([{"role": "user", "content": "Count to ten."}], temperature=0, max_tokens=5)
            # bad values are refused with a sentence, the setting unchanged
            await command(app, pilot, "/set top_p 2")
            assert "top_p" in notices(app, "error")[-1] and app.session.params["top_p"] == 0.95
            await command(app, pilot, "/set max_tokens many")
            assert "integer" in notices(app, "error")[-1]
            # the settings panel (F2): seed, top-p, max tokens and the system prompt
            await pilot.press("f2")
            await pilot.pause()
            screen = app.screen
            assert isinstance(screen, SettingsScreen)
            screen.query_one("#set-top_p").value = "0.5"
            screen.query_one("#set-max_tokens").value = "7"
            screen.query_one("#set-seed").value = "42"
            screen.query_one("#set-system").load_text("You are terse.")
            await pilot.press("ctrl+s")
            await pilot.pause()
            assert not isinstance(app.screen, SettingsScreen)
            params = app.session.params
            assert (params["top_p"], params["max_tokens"], params["seed"]) == (0.5, 7, 42)
            assert app.session.system == "You are terse."
            assert "max 7" in app.query_one(ChatInput).border_subtitle
            # an invalid panel value keeps the panel open with the reason
            await pilot.press("f2")
            await pilot.pause()
            app.screen.query_one("#set-temperature").value = "-1"
            await pilot.press("ctrl+s")
            await pilot.pause()
            assert isinstance(app.screen, SettingsScreen)
            assert "temperature" in str(app.screen.query_one("#settings-error").render())
            await pilot.press("escape")
            await pilot.pause()
            assert app.session.params["temperature"] == 0.0
            app.send("Again.")
            await reply_done(app, pilot)
            assert tiny.last_stats.n_generated <= 7
            conversation = app.session.for_model()
            assert conversation[0] == {"role": "system", "content": "You are terse."}
            # /system alone removes the prompt; seed random
            await command(app, pilot, "/system")
            await command(app, pilot, "/set seed random")
            assert app.session.system is None and app.session.params["seed"] is None

    run(go())
    with pytest.raises(SettingError):
        parse_setting("warp", "9")
    assert parse_setting("temp", "0.3") == ("temperature", 0.3)
    assert parse_setting("top-p", "0.3") == ("top_p", 0.3)


def test_regenerate_clear_and_multiline_input(tiny):
    async def go():
        app = new_app(tiny, params={"max_tokens": 10, "temperature": 1.0})
        async with app.run_test(size=SIZE) as pilot:
            await type_and_send(pilot, "line one\nline two")
            await reply_done(app, pilot)
            assert app.session.messages[0]["content"] == "line one\nline two"
            await pilot.press("ctrl+r")
            await pilot.pause()
            await reply_done(app, pilot)
            assert [m["role"] for m in app.session.messages] == ["user", "assistant"]
            assert len(app.query(AssistantTurn)) == 1
            # up recalls the message sent before
            await pilot.press("up")
            assert app.query_one(ChatInput).text == "line one\nline two"
            app.query_one(ChatInput).clear()
            await pilot.press("ctrl+l")
            await pilot.pause()
            assert app.session.messages == [] and not app.query(".turn") and "ctx 0/512" in app.status_text()
            await pilot.press("ctrl+r")  # nothing to write again: a notice, no crash
            await pilot.pause()
            assert app.is_running and not app.generating

    run(go())


def test_save_and_load_round_trip(tiny, tmp_path):
    path = tmp_path / "chat.json"

    async def go():
        app = new_app(tiny, params={"max_tokens": 6}, system="Be brief.")
        async with app.run_test(size=SIZE) as pilot:
            app.send("First question?")
            await reply_done(app, pilot)
            app.send("Second question?")
            await reply_done(app, pilot)
            await command(app, pilot, f"/save {path}")
            assert "Saved 4 messages" in notices(app)[-1]
            saved = app.session.messages
        doc = json.loads(path.read_text())
        assert doc["format"] == "edgeinfer-chat" and doc["system"] == "Be brief." and doc["messages"] == saved

        app = new_app(tiny, params={"max_tokens": 6})
        async with app.run_test(size=SIZE) as pilot:
            await command(app, pilot, f"/load {path}")
            assert app.session.messages == saved and app.session.system == "Be brief."
            assert len(app.query(UserTurn)) == 2 and len(app.query(AssistantTurn)) == 2
            assert [w.source for w in app.query(AssistantTurn)] == [saved[1]["content"], saved[3]["content"]]
            used = len(tiny.tokenize_chat(app.session.for_model(), add_generation_prompt=False))
            assert f"ctx {used}/512" in app.status_text()
            app.send("Third?")  # the loaded conversation goes on
            await reply_done(app, pilot)
            assert len(app.session.messages) == 6
            # errors are notices, the conversation untouched
            await command(app, pilot, f"/load {tmp_path / 'missing.json'}")
            assert "No such file" in notices(app, "error")[-1]
            (tmp_path / "bad.json").write_text("{not json")
            await command(app, pilot, f"/load {tmp_path / 'bad.json'}")
            assert "not a JSON file" in notices(app, "error")[-1] and len(app.session.messages) == 6

    run(go())
    # the OpenAI shape loads too: a leading system message becomes the system prompt
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]))
    loaded = load_conversation(plain)
    assert loaded.system == "S" and loaded.messages == [{"role": "user", "content": "U"}]


def test_context_overflow_drops_oldest_turns_with_a_notice(tiny_path):
    llm = load(tiny_path, n_ctx=160, progress=False)

    async def go():
        app = new_app(llm, params={"max_tokens": 16}, system="Keep me.")
        async with app.run_test(size=SIZE) as pilot:
            questions = [f"Question number {i}: what comes next in this list?" for i in range(4)]
            for q in questions:
                app.send(q)
                await reply_done(app, pilot)
                assert app.last_result.error is None
            warnings = notices(app, "warning")
            assert warnings and "dropped the" in warnings[0] and "system prompt is kept" in warnings[0]
            contents = [m["content"] for m in app.session.messages]
            assert questions[0] not in contents and questions[-1] in contents
            assert app.session.for_model()[0] == {"role": "system", "content": "Keep me."}
            # the dropped turns stay on screen, dimmed; the model's view matches the session
            dropped = list(app.query(".turn.dropped"))
            assert dropped and "out of context" in dropped[0].border_subtitle
            assert len(shown_turns(app)) == len(app.session.messages)
            used = len(llm.tokenize_chat(app.session.for_model(), add_generation_prompt=False))
            assert used <= 160 and f"ctx {used}/160" in app.status_text()

    run(go())


def test_a_message_longer_than_the_context_is_an_error_in_the_app(tiny_path):
    llm = load(tiny_path, n_ctx=48, progress=False)

    async def go():
        app = new_app(llm, params={"max_tokens": 8})
        async with app.run_test(size=SIZE) as pilot:
            text = "This message is far too long for a context of forty-eight tokens, by a lot."
            app.query_one(ChatInput).load_text(text)
            await pilot.press("enter")
            await reply_done(app, pilot)
            error = notices(app, "error")[-1]
            assert "context" in error and "back in the input box" in error
            assert app.session.messages == [] and app.query_one(ChatInput).text == text
            app.query_one(ChatInput).load_text("Hi")
            await pilot.press("enter")
            await reply_done(app, pilot)
            assert app.last_result.error is None and len(app.session.messages) == 2
            # a reply that runs into the end of the context stops there, with a notice
            await command(app, pilot, "/clear")
            await command(app, pilot, "/max_tokens 100")
            app.send("Hi")
            await reply_done(app, pilot)
            assert app.last_result.stats.context_full and "cut at the context end" in app.turns[-1].border_subtitle
            assert "end of the 48-token context" in notices(app, "warning")[-1]

    run(go())


def test_bad_model_path_is_shown_in_the_app(tmp_path):
    garbage = tmp_path / "broken.gguf"
    garbage.write_bytes(b"not a gguf file" * 10)

    async def go(model, expected):
        app = ChatApp(model)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.load_error is not None, what="the load error")
            error = notices(app, "error")[-1]
            assert "Could not load" in error and expected in error
            assert "load failed" in app.status_text()
            await type_and_send(pilot, "hello")  # no model: a notification, no crash
            assert app.is_running and app.session.messages == []
            await command(app, pilot, "/quit")
        assert app.return_code in (0, None)

    run(go(str(tmp_path / "nowhere" / "model.gguf"), "No such model file"))
    run(go(str(garbage), "GGUF"))


def test_info_and_help_views(tiny):
    async def go():
        app = new_app(tiny)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("f3")
            await pilot.pause()
            assert isinstance(app.screen, InfoScreen)
            text = app.screen.text
            for row in ("architecture", "llama", "parameters", "tokenizer", "context here", "512 tokens"):
                assert row in text
            await pilot.press("escape")
            await pilot.press("f1")
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape")
            await pilot.pause()
            await command(app, pilot, "/nonsense")
            assert "Unknown command" in notices(app, "error")[-1]

    run(go())


def test_real_model_greedy_reply_equals_llm_chat(smollm2_path):
    llm = load(smollm2_path, n_ctx=1024, progress=False)
    question = "What is the capital of France?"

    async def go():
        app = new_app(llm, params={"temperature": 0.0, "max_tokens": 24})
        async with app.run_test(size=SIZE) as pilot:
            await type_and_send(pilot, question)
            await reply_done(app, pilot)
            return app.session.messages[-1]["content"], app.query(AssistantTurn).last().source

    reply, shown = run(go())
    expected = llm.chat([{"role": "user", "content": question}], temperature=0, max_tokens=24)
    assert reply == expected == shown and reply.strip()


def test_cli_chat_command_and_lazy_import(tiny_path):
    from edgeinfer.cli import build_parser

    args = build_parser().parse_args(["chat", str(tiny_path), "--temp", "0", "-n", "9", "-c", "256"])
    assert args.func.__name__ == "cmd_chat" and args.draft is None and args.ctx_size == 256
    assert ChatApp(str(tiny_path)).load_kwargs == {"n_ctx": 4096, "n_threads": None}
    assert ChatApp(str(tiny_path), draft="small.gguf").load_kwargs["draft"] == "small.gguf"
    assert ChatApp(str(tiny_path), kv_type="q8_0").load_kwargs["kv_type"] == "q8_0"
    # `edgeinfer run` (the cli module and its parser) never imports textual
    code = "import sys, edgeinfer.cli as c; c.build_parser(); import edgeinfer.tui; print('textual' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
