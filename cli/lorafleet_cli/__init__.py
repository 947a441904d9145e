"""The ``lorafleet`` command line: the one layer that may use both the operator and the
runtime (``lorafleet serve`` scans catalogs with the operator's code and writes the index the
runtime reads). Neither of those packages imports this one."""
