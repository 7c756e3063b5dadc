"""Headless `qtui` subcommands: thin wrappers over backend services."""
