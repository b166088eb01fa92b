"""Records in and out: one ECG as read from a file (``record``), the readers for JSON, CSV, ``.npy`` and WFDB
(``readers``) and for hospital files — DICOM, HL7 aECG, Philips, GE MUSE, SCP-ECG, told by content (``formats``) —,
records written back out (``writers``), and the official preprocessing that turns a record into model input
(``preprocess``: validate, 500 Hz, z-score, 5 s segments).

May import: numpy, scipy and the format libraries; nothing else of ``ecgfm``. Knows nothing of the network.
"""
