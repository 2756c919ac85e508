# Image the deploy and docker-build targets use.
IMG ?= ghcr.io/keymint/keymint:latest

# Control plane the tests and `make run` use, built from Go modules (see hack/controlplane).
KUBERNETES_VERSION ?= 1.36.3
ETCD_VERSION ?= 3.6.16
# Traefik for the proxy suites (test/e2e runs config/traefik with it).
TRAEFIK_VERSION ?= 3.6.12

# One build configuration for everything make builds and tests: the Dockerfile's
# static, path-trimmed build, which make cluster's image uses too. Each package is
# then compiled once rather than once per configuration (minutes on a cold cache).
export CGO_ENABLED ?= 0
export GOFLAGS += -trimpath

SHELL = /usr/bin/env bash -o pipefail
.SHELLFLAGS = -ec

CONTAINER_TOOL ?= docker
KUBECTL ?= kubectl

.PHONY: all
all: build

##@ General

.PHONY: help
help: ## Show the targets and what they do.
	@awk 'BEGIN {FS = ":.*##"; printf "\nUsage:\n  make \033[36m<target>\033[0m\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) } ' $(MAKEFILE_LIST)

##@ Development

.PHONY: manifests
manifests: controller-gen kustomize ## Generate the CRDs, RBAC role and webhook configurations under config/, and the Helm chart's copies of them.
	"$(CONTROLLER_GEN)" rbac:roleName=manager-role crd webhook paths="./..." output:crd:artifacts:config=config/crd/bases
	go run ./hack/chart -kustomize "$(KUSTOMIZE)"

.PHONY: helm-chart
helm-chart: kustomize ## Regenerate the CRDs, RBAC and webhook configuration of the Helm chart (dist/chart) from config/.
	go run ./hack/chart -kustomize "$(KUSTOMIZE)"

.PHONY: generate
generate: controller-gen ## Generate DeepCopy methods for the API types.
	"$(CONTROLLER_GEN)" object:headerFile="hack/boilerplate.go.txt" paths="./..."

.PHONY: fmt
fmt: ## Run go fmt.
	go fmt ./...

.PHONY: vet
vet: ## Run go vet.
	go vet ./...

.PHONY: control-plane
control-plane: ## Build etcd, kube (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy in one binary) and CoreDNS (and kubectl if none is on PATH) into bin/k8s; a no-op once built.
	go run ./hack/controlplane -dir "$(LOCALBIN)/k8s" -kubernetes-version $(KUBERNETES_VERSION) -etcd-version $(ETCD_VERSION) -traefik-version ""

.PHONY: traefik
traefik: control-plane ## Build Traefik from its Go module into bin/k8s/<Kubernetes version>/traefik, beside the control plane, for the proxy suites (test/e2e runs config/traefik with it); a no-op once built.
	go run ./hack/controlplane -dir "$(LOCALBIN)/k8s" -kubernetes-version $(KUBERNETES_VERSION) -etcd-version $(ETCD_VERSION) -traefik-version $(TRAEFIK_VERSION)

.PHONY: test
test: manifests generate fmt vet control-plane traefik test-deps helm ## Run every test: unit, envtest suites (real kube-apiserver + etcd), end-to-end, and the in-cluster suite (a one-node cluster as make cluster runs; needs root).
	PATH="$$PATH:$(CONTROL_PLANE_DIR)" KUBEBUILDER_ASSETS="$(CONTROL_PLANE_DIR)" go test ./... -count=1 -coverprofile cover.out

.PHONY: test-e2e
test-e2e: control-plane traefik test-deps ## Run only the end-to-end suite: keymint started as make run does, driven with kubectl and HTTPS.
	PATH="$$PATH:$(CONTROL_PLANE_DIR)" KUBEBUILDER_ASSETS="$(CONTROL_PLANE_DIR)" go test ./test/e2e/ -count=1 -v -args -ginkgo.v

.PHONY: test-deps
test-deps: ## Install nginx, caddy and redis-server (Debian packages) for the suites if they are missing; a no-op once installed.
	@missing=""; \
	for bin in nginx caddy redis-server; do \
	  command -v $$bin >/dev/null 2>&1 || PATH="$$PATH:/usr/sbin:/sbin" command -v $$bin >/dev/null 2>&1 || missing="$$missing $$bin"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
	    echo "The suites run nginx and caddy (end-to-end) and redis-server (shared rate limits); missing:$$missing. Install them (Debian/Ubuntu: sudo apt-get install$$missing) and run make again." >&2; \
	    exit 1; \
	  fi; \
	  echo "Installing$$missing for the suites (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

.PHONY: bench
bench: manifests control-plane ## Measure the figures of docs/performance.md against baselines and rewrite its generated blocks (hack/bench; about 45 min; BENCH_ARGS="-only micro,http", see go run ./hack/bench -h).
	go run ./hack/bench $(BENCH_ARGS)

##@ Build

.PHONY: build
build: manifests generate fmt vet ## Build the manager into bin/keymint and the kubectl plugin into bin/kubectl-keymint.
	go build -o bin/keymint ./cmd/keymint
	go build -o bin/kubectl-keymint ./cmd/kubectl-keymint

.PHONY: run
run: build control-plane ## Run keymint in the foreground: against the cluster in your kubeconfig if one answers, else a local control plane (Ctrl-C stops all). REPLICAS=2 RATE_LIMIT_BACKEND=redis: two replicas sharing budgets in a local redis-server.
	go build -o bin/keymint-run ./hack/run
	bin/keymint-run $(if $(REPLICAS),-replicas $(REPLICAS)) $(if $(RATE_LIMIT_BACKEND),-rate-limit-backend $(RATE_LIMIT_BACKEND)) $(RUN_ARGS)

.PHONY: cluster
cluster: manifests control-plane helm ## Run a one-node Kubernetes cluster here (containerd, CNI bridge, CoreDNS; needs root) with keymint installed from dist/chart; writes .dev/cluster.env; Ctrl-C stops it and cleans up.
	go build -o bin/keymint-cluster ./hack/cluster
	bin/keymint-cluster $(CLUSTER_ARGS)

.PHONY: cluster-down
cluster-down: ## Clean up after a make cluster that was killed (SIGKILL, a crash) and could not clean up itself.
	go build -o bin/keymint-cluster ./hack/cluster
	bin/keymint-cluster -down

.PHONY: docker-build
docker-build: ## Build the manager image.
	$(CONTAINER_TOOL) build -t $(IMG) .

.PHONY: docker-push
docker-push: ## Push the manager image.
	$(CONTAINER_TOOL) push $(IMG)

.PHONY: build-installer
build-installer: manifests generate kustomize ## Write dist/install.yaml: CRDs and every resource the manager needs, in one file.
	mkdir -p dist
	cd config/manager && "$(KUSTOMIZE)" edit set image controller=$(IMG)
	"$(KUSTOMIZE)" build config/default > dist/install.yaml

##@ Deployment

ifndef ignore-not-found
  ignore-not-found = false
endif

.PHONY: install
install: manifests ## Install the CRDs into the cluster in your kubeconfig.
	$(KUBECTL) kustomize config/crd | $(KUBECTL) apply --server-side -f -

.PHONY: uninstall
uninstall: manifests ## Remove the CRDs from the cluster. Call with ignore-not-found=true to ignore missing ones.
	$(KUBECTL) kustomize config/crd | $(KUBECTL) delete --ignore-not-found=$(ignore-not-found) -f -

.PHONY: deploy
deploy: manifests kustomize ## Deploy the manager to the cluster in your kubeconfig.
	cd config/manager && "$(KUSTOMIZE)" edit set image controller=$(IMG)
	"$(KUSTOMIZE)" build config/default | $(KUBECTL) apply --server-side -f -

.PHONY: undeploy
undeploy: kustomize ## Remove the manager from the cluster. Call with ignore-not-found=true to ignore missing resources.
	"$(KUSTOMIZE)" build config/default | $(KUBECTL) delete --ignore-not-found=$(ignore-not-found) -f -

##@ Tools

LOCALBIN ?= $(shell pwd)/bin
$(LOCALBIN):
	mkdir -p "$(LOCALBIN)"

CONTROL_PLANE_DIR ?= $(LOCALBIN)/k8s/$(KUBERNETES_VERSION)
CONTROLLER_GEN ?= $(LOCALBIN)/controller-gen
KUSTOMIZE ?= $(LOCALBIN)/kustomize
HELM ?= $(LOCALBIN)/helm

CONTROLLER_TOOLS_VERSION ?= v0.21.0
KUSTOMIZE_VERSION ?= v5.5.0
HELM_VERSION ?= v3.22.0

.PHONY: controller-gen
controller-gen: $(CONTROLLER_GEN) ## Install controller-gen into bin/.
$(CONTROLLER_GEN): $(LOCALBIN)
	$(call go-install-tool,$(CONTROLLER_GEN),sigs.k8s.io/controller-tools/cmd/controller-gen,$(CONTROLLER_TOOLS_VERSION))

.PHONY: kustomize
kustomize: $(KUSTOMIZE) ## Install kustomize into bin/.
$(KUSTOMIZE): $(LOCALBIN)
	$(call go-install-tool,$(KUSTOMIZE),sigs.k8s.io/kustomize/kustomize/v5,$(KUSTOMIZE_VERSION))

.PHONY: helm
helm: $(HELM) ## Install helm into bin/.
$(HELM): $(LOCALBIN)
	$(call go-install-tool,$(HELM),helm.sh/helm/v3/cmd/helm,$(HELM_VERSION))

# go-install-tool installs package $(2) at version $(3) as $(1)-$(3) and links $(1) to it,
# so that changing a version above installs the new one.
define go-install-tool
@[ -f "$(1)-$(3)" ] && [ "$$(readlink -- "$(1)" 2>/dev/null)" = "$$(basename "$(1)-$(3)")" ] || { \
set -e; \
package=$(2)@$(3) ;\
echo "Installing $${package}" ;\
rm -f "$(1)" ;\
GOBIN="$(LOCALBIN)" go install $${package} ;\
mv "$(LOCALBIN)/$$(basename "$(1)")" "$(1)-$(3)" ;\
} ;\
ln -sf "$$(basename "$(1)-$(3)")" "$(1)"
endef
