"""Scripted experts that act from privileged simulator state, to record demonstrations."""
