"""Model zoo: a registry of builders with one classifier interface."""
