"""qtui's terminal UI: the Textual app, its screens and widgets, and the CLI."""
