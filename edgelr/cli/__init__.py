"""Thin CLI commands over the edgelr library; one module per sub-command."""
