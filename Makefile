# The two commands a new user needs: `make run` and `make test`. See README.md.
.PHONY: run test bench lint ci image pg-image pg-destroy

# Extra arguments: make run ARGS="--listen 0.0.0.0:8080"; make test ARGS=eventstore
ARGS ?=

run:
	@scripts/run.sh $(ARGS)

test:
	@scripts/test.sh $(ARGS)

bench:
	@scripts/bench.sh $(ARGS)

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	python3 scripts/layers.py

ci:
	@bash .ci/run

# A container image of the service (portcullis:latest), built locally.
image:
	@scripts/image.sh

# The local PostgreSQL image for Docker (built by `make test` when it is needed).
pg-image:
	@scripts/pg-image.sh

# Delete the local cluster that `make run` keeps in .pgdata.
pg-destroy:
	@scripts/pg-local.sh destroy
