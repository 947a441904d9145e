"""Reconcilers: read what is, render what should be (pure core), write the difference
(k8s layer). Called by the kopf handlers; never import kopf here."""
