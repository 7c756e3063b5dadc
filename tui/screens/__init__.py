"""qtui's screens."""
