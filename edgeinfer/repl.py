"""The interactive chat of `edgeinfer run MODEL` (no prompt): like `ollama run`, on the public API only.

    >>> a question                 one line, sent on Enter
    >>> \"\"\"                        a multi-line message, closed by another \"\"\"
    /set temperature 0.2           change a sampling setting (see /?)
    /clear  /bye  /?               forget the conversation, leave, help
Ctrl-C stops a reply without leaving; Ctrl-D (or /bye) leaves. When the conversation no longer fits the
context, its oldest turns are dropped, with a notice.
"""

from __future__ import annotations

import sys
from typing import TextIO

from .chat import SETTABLE, Conversation, SettingError, dropped_turns, setting_name

HELP = """Available commands:
  /set PARAM VALUE   set a sampling parameter: {params}
  /set system TEXT   set the system prompt (and clear the conversation)
  /show              show the current settings
  /clear             forget the conversation
  /bye               leave (Ctrl-D too)
  /?                 this help
Use \"\"\" to begin and end a multi-line message. Ctrl-C stops a reply."""


class ChatSession:
    """A conversation and its settings; `run` drives it from a terminal or any text stream."""

    def __init__(self, llm, params: dict, system: str | None = None, verbose: bool = False,
                 stdin: TextIO | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None,
                 reasoning_budget: int | None = None):
        self.llm = llm
        self.chat = Conversation(params, system)
        self.verbose = verbose
        # a reasoning model's think block is closed after this many tokens; its text goes to stderr
        self.reasoning_budget = reasoning_budget
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.interactive = hasattr(self.stdin, "isatty") and self.stdin.isatty()

    # -- input ---------------------------------------------------------------------------------------

    def _readline(self, prompt: str) -> str | None:
        if self.stdin is sys.stdin and self.interactive:
            try:
                return input(prompt)
            except EOFError:
                return None
        self.stdout.write(prompt)
        self.stdout.flush()
        line = self.stdin.readline()
        if not line:
            return None
        return line.rstrip("\n")

    def _read_message(self) -> str | None:
        line = self._readline(">>> ")
        if line is None:
            return None
        if line.strip().startswith('"""'):
            parts = [line.strip()[3:]]
            if parts[0].endswith('"""') and len(parts[0]) >= 3:
                return parts[0][:-3]
            while True:
                more = self._readline("... ")
                if more is None:
                    break
                if more.rstrip().endswith('"""'):
                    parts.append(more.rstrip()[:-3])
                    break
                parts.append(more)
            return "\n".join(parts).strip("\n")
        return line

    # -- commands ------------------------------------------------------------------------------------

    def _command(self, line: str) -> bool:
        """Handle a /command; False means leave."""
        words = line.split(maxsplit=2)
        cmd = words[0].lower()
        if cmd in ("/bye", "/exit", "/quit"):
            return False
        if cmd in ("/?", "/help"):
            print(HELP.format(params=", ".join(SETTABLE)), file=self.stdout)
        elif cmd == "/clear":
            self.chat.clear()
            print("Cleared the conversation.", file=self.stdout)
        elif cmd == "/show":
            settings = ", ".join(f"{k}={v}" for k, v in sorted(self.chat.params.items()))
            print(f"{settings}\nsystem: {self.chat.system or '(none)'}", file=self.stdout)
        elif cmd == "/set":
            self._set(words[1:])
        else:
            print(f"Unknown command {cmd!r}; type /? for help.", file=self.stdout)
        return True

    def _set(self, args: list[str]) -> None:
        if not args:
            print("Usage: /set PARAM VALUE (see /?)", file=self.stdout)
            return
        if setting_name(args[0]) == "system":
            self.chat.system = args[1] if len(args) > 1 else None
            self.chat.clear()
            print("Set the system prompt and cleared the conversation.", file=self.stdout)
            return
        try:
            name, value = self.chat.set(args[0], args[1] if len(args) > 1 else "")
        except SettingError as e:
            print(str(e), file=self.stdout)
            return
        print(f"Set {name} to {value}.", file=self.stdout)

    # -- conversation --------------------------------------------------------------------------------

    def reply(self, text: str) -> None:
        self.chat.messages.append({"role": "user", "content": text})
        dropped = self.chat.fit(self.llm)
        if dropped:
            print(f"[context: dropped the {dropped_turns(dropped)} oldest turn(s) to fit the {self.llm.n_ctx}-token "
                  "context]", file=self.stderr)  # fmt: skip
        pieces: list[str] = []
        budget = {} if self.reasoning_budget is None else {"reasoning_budget": self.reasoning_budget}
        try:
            for piece in self.llm.chat(self.chat.for_model(), stream=True, **self.chat.params, **budget):
                if not isinstance(piece, str):  # a ChatDelta: the thinking to stderr, the answer kept
                    if piece.reasoning:
                        self.stderr.write(piece.reasoning)
                        self.stderr.flush()
                    piece = piece.content
                pieces.append(piece)
                self.stdout.write(piece)
                self.stdout.flush()
        except KeyboardInterrupt:
            self.stdout.write("\n[stopped]")
        self.stdout.write("\n\n")
        self.stdout.flush()
        self.chat.messages.append({"role": "assistant", "content": "".join(pieces)})
        if self.verbose:
            print_stats(self.llm.last_stats, self.stderr)

    def run(self) -> int:
        if self.interactive:
            print("Type a message, /? for help, /bye (or Ctrl-D) to leave.", file=self.stdout)
        while True:
            try:
                line = self._read_message()
            except KeyboardInterrupt:
                self.stdout.write("\nUse /bye or Ctrl-D to leave.\n")
                continue
            if line is None:
                if self.interactive:
                    self.stdout.write("\n")
                return 0
            if not line.strip():
                continue
            if line.startswith("/"):
                if not self._command(line.strip()):
                    return 0
                continue
            self.reply(line)


def print_stats(stats, stream: TextIO) -> None:
    """Timings of the last reply, as llama-cli prints them."""
    if stats is None:
        return
    pp = stats.n_prompt / stats.prompt_s if stats.prompt_s > 0 else float("nan")
    tg = (stats.n_generated - 1) / stats.gen_s if stats.gen_s > 0 and stats.n_generated > 1 else float("nan")
    print(
        f"prompt: {stats.n_prompt} tokens, {stats.prompt_s * 1000:.0f} ms, {pp:.1f} tokens/s | "
        f"generation: {stats.n_generated} tokens, {stats.gen_s * 1000:.0f} ms, {tg:.1f} tokens/s | "
        f"finish: {stats.finish_reason}",
        file=stream,
        flush=True,
    )
    if getattr(stats, "speculative", ""):
        drafted, accepted = stats.n_drafted, stats.n_accepted
        rate = f"{accepted / drafted:.1%}" if drafted else "n/a"
        off = ", turned off where it did not pay" if getattr(stats, "spec_off", False) else ""
        print(f"speculative ({stats.speculative}): {drafted} drafted, {accepted} accepted, acceptance {rate}, "
              f"{stats.spec_rounds} verify passes{off}", file=stream, flush=True)  # fmt: skip
    if getattr(stats, "expert_counts", None) is not None:
        from .engine.experts import format_expert_counts

        print(format_expert_counts(stats.expert_counts, title="experts chosen"), file=stream, flush=True)
