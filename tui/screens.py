"""The chat app's dialogs: settings, model information, help."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static, TextArea

from .conversation import PANEL_SETTINGS, SettingError, parse_setting, validate_params

KEYS = (
    ("Enter", "send the message"),
    ("Ctrl+J", "a new line in the message (also Shift+Enter, Alt+Enter where the terminal reports them)"),
    ("Up / Down", "the messages sent before (on the first / last line of the box)"),
    ("Escape, Ctrl+C", "stop the reply being written (the text so far is kept)"),
    ("Ctrl+R", "write the last reply again"),
    ("Ctrl+L", "clear the conversation"),
    ("Ctrl+S", "save the conversation to edgeinfer-chat-<time>.json here"),
    ("F2 / F3 / F1", "settings / model information / this help"),
    ("Ctrl+Q", "quit"),
)
COMMANDS = (
    ("/set NAME VALUE", "temperature, top_p, top_k, min_p, repeat_penalty, max_tokens, seed (random: a fresh"),
    ("", "one each reply), presence_penalty, frequency_penalty; /temperature 0.2 for short"),
    ("/system TEXT", "the system prompt from the next reply on (/system alone removes it)"),
    ("/show", "the current settings"),
    ("/save PATH, /load PATH", "the conversation as JSON (messages and system prompt; the file records"),
    ("", "the settings too, but /load keeps the current ones)"),
    ("/retry, /clear", "write the last reply again; forget the conversation"),
    ("/settings, /info, /help", "the settings panel, the model, this help"),
    ("/quit", "leave (/bye and /exit too)"),
)
NOTES = """\
The status bar: the context the conversation fills (its tokens as the chat template renders them), the
last reply's prompt and generation speed, its generated tokens per joule and where the joules came from
("estimate": this process's CPU time x a stated wattage, never a measurement), and the share of drafted
tokens accepted when a draft model is loaded. When the conversation outgrows the context, its oldest
turns are dropped (the system prompt is kept), with a notice; the dropped turns stay on screen, dimmed."""


def help_text() -> Content:
    def table(rows) -> str:
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)

    return Content.assemble(
        ("Keys\n", "bold"), table(KEYS), "\n\n", ("Commands\n", "bold"), table(COMMANDS), "\n\n", NOTES
    )


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,q", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="help"):
            yield Label("edgeinfer chat", classes="title")
            with VerticalScroll():
                yield Static(help_text(), id="help-text")
            yield Label("Escape closes", classes="hint")


class InfoScreen(ModalScreen[None]):
    """What `edgeinfer info` shows, and how the model runs here."""

    BINDINGS = [Binding("escape,f3,q", "dismiss", "Close")]

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="info"):
            yield Label("Model", classes="title")
            with VerticalScroll():
                yield Static(Content(self.text), id="info-text")
            yield Label("Escape closes", classes="hint")


_LABELS = {
    "temperature": "temperature (0 = greedy)",
    "top_p": "top-p (1 = off)",
    "top_k": "top-k (0 = off)",
    "min_p": "min-p (0 = off)",
    "repeat_penalty": "repeat penalty (1 = off)",
    "max_tokens": "max tokens per reply",
    "seed": "seed (empty = random)",
}


class SettingsScreen(ModalScreen[dict | None]):
    """Sampling settings and the system prompt. Dismisses with {"params": {...}, "system": str | None}
    (only what is valid), or None when cancelled."""

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "apply", "Apply", priority=True)]

    def __init__(self, params: dict, system: str | None):
        super().__init__()
        self.params = dict(params)
        self.system = system

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="settings"):
            yield Label("Settings", classes="title")
            with Grid(id="settings-grid"):
                for name in PANEL_SETTINGS:
                    value = self.params.get(name)
                    yield Label(_LABELS[name])
                    yield Input("" if value is None else str(value), id=f"set-{name}", compact=True)
            yield Label("system prompt (applies from the next reply)")
            yield TextArea(self.system or "", id="set-system", soft_wrap=True)
            yield Static("", id="settings-error")
            with Horizontal(id="settings-buttons"):
                yield Button("Apply (Ctrl+S)", id="apply", variant="primary")
                yield Button("Cancel (Esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one(f"#set-{PANEL_SETTINGS[0]}", Input).focus()

    def _collect(self) -> dict:
        params = dict(self.params)
        for name in PANEL_SETTINGS:
            key, value = parse_setting(name, self.query_one(f"#set-{name}", Input).value)
            params[key] = value
        validate_params(params)
        return params

    @on(Button.Pressed, "#apply")
    @on(Input.Submitted)
    def action_apply(self) -> None:
        try:
            params = self._collect()
        except SettingError as e:
            self.query_one("#settings-error", Static).update(Content(str(e)))
            return
        system = self.query_one("#set-system", TextArea).text.strip() or None
        self.dismiss({"params": params, "system": system})

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
