"""Results and their exchange formats: the typed outputs that the CLI, the API, archives and reports share
(``outputs``: ClinicalOutput, FeaturesOutput, CheckpointInfo, ...) and the same results for hospital systems
(``fhir``: a FHIR R4 Bundle).

May import: :mod:`ecgfm.labels`, :mod:`ecgfm.records`, pydantic. Knows nothing of the network, HTTP or archives.
"""
