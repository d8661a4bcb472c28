"""Tests for t5x_like.data."""
