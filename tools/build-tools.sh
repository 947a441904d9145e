#!/usr/bin/env bash
# Builds lorafleet's pinned toolchain from package registries (the Go module proxy) into a
# cache directory outside git. Pins live in tools/versions.env. A tool already built at its
# pinned version is skipped, so a second run is a no-op.
#
# Usage: tools/build-tools.sh [tool ...]   (default: all)
#   tools: kubernetes (kube-apiserver, kube-controller-manager, kubectl, etcd), kube-scheduler,
#          helm, kuberay, minio, fake-gcs-server, kwok
# Environment: LORAFLEET_CACHE (default ${XDG_CACHE_HOME:-~/.cache}/lorafleet)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache=${LORAFLEET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lorafleet}
bin="$cache/bin"
mkdir -p "$bin" "$cache/tools" "$cache/src"

export GOFLAGS="-buildvcs=false -trimpath"
export CGO_ENABLED=0
# These tools need the Go that their go.mod names; let go fetch that toolchain from the proxy.
export GOTOOLCHAIN=${GOTOOLCHAIN:-auto}

log() { printf '[tools] %s\n' "$*" >&2; }

# done_stamp DIR: true when DIR holds a finished build (the stamp is written last).
done_stamp() { [ -f "$1/.complete" ]; }

link_bins() { # link_bins DIR NAME...
  local dir=$1; shift
  for name in "$@"; do ln -sfn "$dir/$name" "$bin/$name"; done
}

# kubernetes_module: print the throwaway module that builds k8s.io/kubernetes commands, making
# it first when it is missing or half-made. kube-apiserver and kube-scheduler are built from
# this one module, so they share one dependency graph (and Go's build cache).
kubernetes_module() {
  local src="$cache/src/kubernetes-$KUBERNETES_VERSION"
  if [ -f "$src/.module-ready" ]; then echo "$src"; return; fi
  local staging_version="v0.${KUBERNETES_VERSION#v1.}"
  rm -rf "$src"; mkdir -p "$src"
  # k8s.io/kubernetes replaces its staging modules (k8s.io/api, ...) with local paths, so it
  # cannot be `go install`ed. A throwaway module requires it and points each staging module at
  # its published version instead. The staging list is read from k8s.io/kubernetes's own go.mod.
  (
    cd "$src"
    go mod init lorafleet.dev/tools/kubernetes >/dev/null 2>&1
    go mod edit -require="k8s.io/kubernetes@$KUBERNETES_VERSION"
    go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" >/dev/null
    local modfile
    modfile=$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$KUBERNETES_VERSION.mod
    grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging' "$modfile" | awk '{print $1}' | while read -r m; do
      go mod edit -replace="$m=$m@$staging_version"
    done
    touch .module-ready
  ) >&2
  echo "$src"
}

# kubernetes_ldflags: the version stamps k8s.io/kubernetes's own build sets, so every binary
# reports KUBERNETES_VERSION (kubectl version, the API server's /version).
kubernetes_ldflags() {
  local minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
  local ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$ldflags"
}

build_kubernetes() {
  local out="$cache/tools/kubernetes-$KUBERNETES_VERSION"
  if done_stamp "$out"; then link_bins "$out" kube-apiserver kube-controller-manager kubectl etcd; return; fi
  log "building kube-apiserver, kube-controller-manager, kubectl, etcd $KUBERNETES_VERSION (slow the first time)"
  rm -rf "$cache/src/kubernetes-$KUBERNETES_VERSION" "$out.tmp"; mkdir -p "$out.tmp"
  local src
  src=$(kubernetes_module)
  (
    cd "$src"
    # etcd comes from the same module graph, so its client and server versions agree.
    cat > etcd.go <<'EOF'
// Package main builds etcd from the version k8s.io/kubernetes pins.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
    local got_etcd
    got_etcd=$(GOFLAGS=-mod=mod go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
    if [ "$got_etcd" != "$ETCD_VERSION" ]; then
      log "error: k8s.io/kubernetes $KUBERNETES_VERSION pins etcd $got_etcd, versions.env says $ETCD_VERSION"; exit 1
    fi
    GOFLAGS="$GOFLAGS -mod=mod" go build -ldflags "$(kubernetes_ldflags)" -o "$out.tmp/" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kubectl
    GOFLAGS="$GOFLAGS -mod=mod" go build -ldflags "-s -w" -o "$out.tmp/etcd" .
  )
  finish "$out"
  link_bins "$out" kube-apiserver kube-controller-manager kubectl etcd
}

# kube-scheduler has a cache entry of its own (adding it rebuilt nothing above), built from the
# same throwaway module with the same version stamps. The e2e test bed binds pods to KWOK's
# fake Node with it.
build_kube-scheduler() {
  local out="$cache/tools/kube-scheduler-$KUBERNETES_VERSION"
  if done_stamp "$out"; then link_bins "$out" kube-scheduler; return; fi
  log "building kube-scheduler $KUBERNETES_VERSION"
  rm -rf "$out.tmp"; mkdir -p "$out.tmp"
  local src
  src=$(kubernetes_module)
  (
    cd "$src"
    GOFLAGS="$GOFLAGS -mod=mod" go build -ldflags "$(kubernetes_ldflags)" -o "$out.tmp/" \
      k8s.io/kubernetes/cmd/kube-scheduler
  )
  finish "$out"
  link_bins "$out" kube-scheduler
}

# go_build NAME MODULE VERSION PKG BINARY [LDFLAGS]: build PKG of MODULE@VERSION into the cache.
# Not `go install pkg@version`: that also reads the module's version list for deprecation
# notices, and the proxy answers 403 for ray-operator's list. A throwaway module requiring
# MODULE@VERSION selects the same dependency versions (the module's own go.mod) without it.
go_build() {
  local name=$1 module=$2 version=$3 pkg=$4 binary=$5 ldflags=${6:-}
  local out="$cache/tools/$name-$version"
  if done_stamp "$out"; then link_bins "$out" "$binary"; return; fi
  log "building $name $version"
  local src="$cache/src/$name-$version"
  rm -rf "$src" "$out.tmp"; mkdir -p "$src" "$out.tmp"
  (
    cd "$src"
    go mod init "lorafleet.dev/tools/$name" >/dev/null 2>&1
    go mod edit -require="$module@$version"
    GOFLAGS="$GOFLAGS -mod=mod" go build -ldflags "-s -w $ldflags" -o "$out.tmp/$binary" "$pkg"
  )
  finish "$out"
  link_bins "$out" "$binary"
}

finish() { # finish OUT: move OUT.tmp into place atomically and stamp it
  local out=$1
  touch "$out.tmp/.complete"
  rm -rf "$out"
  mv "$out.tmp" "$out"
}

# Helm's Makefile stamps the Kubernetes version of its client-go into the binary; without it
# `helm template` and `helm lint` assume Kubernetes v1.20 and refuse charts that need newer.
# HELM_RECIPE is this recipe's revision: bump it when the flags change, so caches rebuild.
HELM_RECIPE=2
build_helm() {
  local out="$cache/tools/helm-$HELM_VERSION-r$HELM_RECIPE"
  if done_stamp "$out"; then link_bins "$out" helm; return; fi
  log "building helm $HELM_VERSION"
  local src="$cache/src/helm-$HELM_VERSION"
  rm -rf "$src" "$out.tmp"; mkdir -p "$src" "$out.tmp"
  (
    cd "$src"
    go mod init lorafleet.dev/tools/helm >/dev/null 2>&1
    go mod edit -require="helm.sh/helm/v3@$HELM_VERSION"
    local client_go major minor ldflags
    client_go=$(GOFLAGS=-mod=mod go list -m -f '{{.Version}}' k8s.io/client-go)  # v0.37.0
    minor=$(echo "$client_go" | cut -d. -f2)
    major=$(( $(echo "${client_go#v}" | cut -d. -f1) + 1 ))
    ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
    for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
      ldflags+=" -X $pkg.k8sVersionMajor=$major -X $pkg.k8sVersionMinor=$minor"
    done
    GOFLAGS="$GOFLAGS -mod=mod" go build -ldflags "$ldflags" -o "$out.tmp/helm" helm.sh/helm/v3/cmd/helm
  )
  finish "$out"
  link_bins "$out" helm
}
build_kuberay() {
  local m=github.com/ray-project/kuberay/ray-operator
  go_build kuberay "$m" "$KUBERAY_VERSION" "$m" ray-operator
}
build_minio() {
  go_build minio github.com/minio/minio "$MINIO_VERSION" github.com/minio/minio minio
}
build_fake-gcs-server() {
  local m=github.com/fsouza/fake-gcs-server
  go_build fake-gcs-server "$m" "$FAKE_GCS_SERVER_VERSION" "$m" fake-gcs-server
}
# KWOK's go.mod has no replace directives, so requiring it selects its own dependency versions:
# no `go get` needed (checked: every module of this build has the version that
# `go get sigs.k8s.io/kwok/cmd/kwok@v0.8.0` selects).
build_kwok() {
  go_build kwok sigs.k8s.io/kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok kwok
}

all=(kubernetes kube-scheduler helm kuberay minio fake-gcs-server kwok)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
start=$(date +%s)
for t in "${targets[@]}"; do
  case " ${all[*]} " in *" $t "*) "build_$t" ;; *) log "unknown tool: $t (known: ${all[*]})"; exit 2 ;; esac
done
log "toolchain ready in $bin ($(( $(date +%s) - start )) s)"
