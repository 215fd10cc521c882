# The two commands of the README. Both set everything up first (scripts/setup.sh is idempotent).
.PHONY: demo test setup

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/vmm demo

test: setup
	.venv/bin/python -m pytest -q
