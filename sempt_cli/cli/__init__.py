"""Typer commands. Thin by design: parse flags → resolve settings → call the library → render."""
