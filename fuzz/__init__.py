"""Coverage-guided fuzzing (atheris) of what reads untrusted bytes: the hospital-file entry the service uses, the
record readers of ``ecgfm predict`` and the request decoders. ``python -m fuzz TARGET --seconds N`` (or
``scripts/fuzz.sh``) runs a campaign; docs/testing.md ("Fuzzing") says what each target allows and what was found."""
