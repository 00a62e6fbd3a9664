"""tlwork's terminal front ends: the typer CLI (``tui.cli``) and the Textual app (``tui.app``).

Both consume the engine in ``core`` through its generators of typed events; nothing here
trains or evaluates by itself.
"""
