# Two commands from a fresh clone (README): each sets up .venv first (scripts/setup), then runs.
.PHONY: setup bench test lint

setup:
	scripts/setup

# The main job: every benchmark suite on this machine, the report in reports/machines/<machine>/.
bench: setup
	.venv/bin/pytest bench --benchmark-only

# Every test: lint, the quick set, the slow set (subprocess jobs, torchrun, Ray), every benchmark body once.
test: setup lint
	. .venv/bin/activate && pytest && pytest -m slow && pytest bench --benchmark-disable

lint: setup
	.venv/bin/ruff check mnist_models bench tests scripts
	.venv/bin/ruff format --check mnist_models bench tests scripts
