"""Local test bed: real etcd + kube-apiserver + kube-controller-manager, MinIO and a GCS
emulator on loopback, built from pinned sources by ``make tools``.

Used by ``make cluster-up`` / ``make cluster-down`` and by the pytest fixtures, so the two
cannot drift. Nothing here is faked: only kubelets and containers are absent.
"""
