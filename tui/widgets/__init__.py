"""Widgets of the qtui panel."""
