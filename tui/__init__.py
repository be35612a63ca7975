"""The terminal chat app of `edgeinfer chat` (Textual). Import `edgeinfer.tui.app` for ChatApp and run_chat; this
package itself imports nothing, so `edgeinfer run` and the library never load textual."""
