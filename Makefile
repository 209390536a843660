# Stagecoach: `make test` runs every check (see README.md).

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: test demo deps fmt-check clippy unit e2e-env builder-static builder-image operator-image images bench-plan

## test: install what the tests need, then run every check (end-to-end tests included)
test: deps fmt-check clippy e2e-env unit chart-check

## demo: build examples/hello through the real pods on podman, push it, run it
demo:
	./scripts/demo.sh

## deps: install the tools the checks need (idempotent)
deps:
	./scripts/install-deps.sh

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

unit:
	$(CARGO) test --workspace --locked

## e2e-env: the local registry, the base images and the two images the end-to-end tests use
e2e-env:
	./scripts/registry.sh start
	./scripts/base-images.sh
	./scripts/image.sh builder
	./scripts/image.sh operator

## builder-static: the fully static stagecoach-builder for build pods
builder-static:
	RUSTFLAGS='-C target-feature=+crt-static' $(CARGO) build --release --locked \
		-p stagecoach-builder --target x86_64-unknown-linux-gnu
	@echo target/x86_64-unknown-linux-gnu/release/stagecoach-builder

## builder-image: the builder image (scratch + static builder + CA bundle + an ssh client
## for ssh:// sources), made with Stagecoach's own image code, in the local registry
## (REGISTRY or BUILDER_IMAGE to push elsewhere)
builder-image:
	./scripts/image.sh builder

## operator-image: the operator image, the same way (REGISTRY or OPERATOR_IMAGE)
operator-image:
	./scripts/image.sh operator

## install: `stagecoach` into $(PREFIX)/bin (default ~/.local), and `kubectl-stagecoach`
## beside it so that `kubectl stagecoach build ...` works
PREFIX ?= $(HOME)/.local
.PHONY: install
install:
	$(CARGO) install --locked --path operator --root $(PREFIX)
	ln -sf stagecoach $(PREFIX)/bin/kubectl-stagecoach

## images: both images
images: builder-image operator-image

## bench-plan: time planning a generated 500-stage Dockerfile
bench-plan:
	$(CARGO) bench -p stagecoach-plan --bench plan

## chart-check: the Helm chart, RBAC, images' Dockerfiles, examples and GitOps health checks, offline
.PHONY: chart-check
chart-check:
	./scripts/check-chart.sh
	./scripts/check-gitops.sh
