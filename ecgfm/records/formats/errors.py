"""The one error of :mod:`ecgfm.records.formats`."""

from __future__ import annotations

from ecgfm.records.record import RecordError


class FormatError(RecordError):
    """A file that is not a readable ECG of a supported format: truncated, corrupt, without a waveform, an XML
    that is not an ECG, refused XML (entities), a lead that cannot be named. The message names the problem and
    never quotes the file's contents."""
