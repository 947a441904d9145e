{{/*
The operator's RBAC rules: ONE list, rendered into the ClusterRole (cluster-wide mode) or into
a Role in each watched namespace (namespaced mode). Each rule names the code that needs it;
tests/integration/test_chart_install.py runs the operator with only these grants through a
full flow, and `kubectl auth can-i` checks that nothing more is granted.
*/}}
{{- define "lorafleet.operatorRules" -}}
# kopf lists and watches both kinds and keeps its progress in annotations (patch); the
# reconcilers read LoRAModels and AdapterCatalogs by name (reconcile/loramodel.py,
# reconcile/controllers.py).
- apiGroups: ["lorafleet.dev"]
  resources: ["loramodels", "adaptercatalogs"]
  verbs: ["get", "list", "watch", "patch"]
# Status is written with merge patches on the subresource (reconcile/status_patch.py).
- apiGroups: ["lorafleet.dev"]
  resources: ["loramodels/status", "adaptercatalogs/status"]
  verbs: ["patch"]
# RayServices and index ConfigMaps are owned with blockOwnerDeletion: clusters that enable the
# OwnerReferencesPermissionEnforcement admission plugin check this on the owner.
- apiGroups: ["lorafleet.dev"]
  resources: ["loramodels/finalizers", "adaptercatalogs/finalizers"]
  verbs: ["update"]
# The rendered RayService: watched for KubeRay's status, read and server-side applied
# (create + patch). Never deleted by the operator: garbage collection removes it with its
# LoRAModel.
- apiGroups: ["ray.io"]
  resources: ["rayservices"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Catalog index ConfigMaps: listed by label, server-side applied, stale shards deleted
# (reconcile/adaptercatalog.py). `get` because the per-LoRAModel runtime Role grants it and
# Kubernetes refuses to create a Role granting more than its creator holds.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "create", "patch", "delete"]
# Credentials Secrets named by AdapterCatalogs, read one by one by name (never listed or
# watched).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# Events on LoRAModels and AdapterCatalogs (kopf's and ours, k8s/client.py post_event).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# The runtime ServiceAccount, Role and RoleBinding rendered per LoRAModel
# (builders/runtime_rbac.py): read and server-side applied; they go with their LoRAModel by
# garbage collection, so no delete.
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "create", "patch"]
{{- end }}
