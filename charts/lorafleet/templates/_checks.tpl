{{/*
KubeRay is a prerequisite. Against a live cluster a missing RayService CRD fails the install
with what to do. "Live" means our own CRD can be looked up: helm install/upgrade apply crds/
before rendering templates, while `helm template` and --dry-run=client look nothing up, so they
never fail here.
*/}}
{{- define "lorafleet.checkKubeRay" -}}
{{- if .Values.kuberay.checkInstalled }}
{{- $live := lookup "apiextensions.k8s.io/v1" "CustomResourceDefinition" "" "loramodels.lorafleet.dev" }}
{{- if $live }}
{{- if not (lookup "apiextensions.k8s.io/v1" "CustomResourceDefinition" "" "rayservices.ray.io") }}
{{- fail "KubeRay is not installed: the CRD rayservices.ray.io is missing. lorafleet needs the KubeRay operator (>=1.6.0 <1.8.0) first, e.g. `helm install kuberay-operator kuberay/kuberay-operator --version 1.7.0` from https://ray-project.github.io/kuberay-helm/ (or set kuberay.checkInstalled=false to install anyway)." }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
