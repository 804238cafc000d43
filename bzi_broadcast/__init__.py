"""bzi-broadcast: write an announcement once, publish it on every channel."""

__version__ = "0.1.0"
