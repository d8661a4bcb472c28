"""Tests for launch/."""
