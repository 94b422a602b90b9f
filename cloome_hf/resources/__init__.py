"""Data files bundled with cloome-hf (see PROVENANCE.md)."""
