"""qtui's workers and services: everything that talks to the world.

This package never imports textual (an import-linter contract checks it), so
every service here can run headless from the CLI, from tests, or under the TUI.
"""
