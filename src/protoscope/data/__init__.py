"""Natural-image data sources (read from local files; nothing is downloaded)."""
