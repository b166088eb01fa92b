"""Archive scoring (``ecgfm batch``): whole archives into a Parquet dataset on Ray Data. ``inputs`` expands files,
folders, globs and manifests; ``batch`` is the job (read tasks, one actor pool per model, ``--resume``); ``parts``
commits the output atomically and reads it back; ``storage`` resolves local folders and object stores (S3, GCS;
``pyarrow.fs``). Its command line is :mod:`ecgfm.cli.batch`; docs/batch.md.

May import: every ``ecgfm`` package below it (records, network, results, :mod:`ecgfm.inference`), pyarrow (and
its ``fs``), Ray.
"""
