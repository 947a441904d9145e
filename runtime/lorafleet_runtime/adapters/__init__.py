"""Adapter I/O: which adapters exist (``index``: the catalogs' index, read from ConfigMaps or
a directory), reading their files from S3, GCS or a mounted folder (``remote_files``), and
keeping verified copies on the replica's disk (``disk_cache``)."""
