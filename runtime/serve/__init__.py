"""The live web view (`edgedet run ... --serve`): annotated stream, stats and prompting in a browser."""
from runtime.serve.prompts import LivePromptedDetector
from runtime.serve.server import LiveServer, ServeError, parse_serve_address

__all__ = ["LivePromptedDetector", "LiveServer", "ServeError", "parse_serve_address"]
