"""nextmv-watcher: track run folders in Nextmv Cloud, exactly once."""

__version__ = "0.2.0"
