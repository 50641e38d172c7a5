"""The conformance suite: Hypothesis checks any registered backend against the reference."""
