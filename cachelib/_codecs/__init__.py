"""Codecs: the compressor registry, framed codecs, and the worker threads every layer shares."""
