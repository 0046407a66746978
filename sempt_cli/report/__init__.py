"""Reporting: the papers' published numbers (`report.paper`) and, later, tables comparing runs against them."""
