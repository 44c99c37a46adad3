"""proxyd: an edge and service proxy in the family of Envoy, on trio."""

__version__ = "0.1.0"
