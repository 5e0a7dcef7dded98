"""Wyoming speech-to-text and text-to-speech servers for Home Assistant."""

__version__ = "0.1.0"
