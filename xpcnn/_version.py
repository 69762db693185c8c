"""The version of xpcnn, in the one module every other may import."""

__version__ = "0.4.0.dev0"
