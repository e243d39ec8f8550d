"""Demonstration data: episodes recorded by ``envs.recording``, read as behaviour-cloning samples; the record and DAgger jobs."""
