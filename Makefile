# Thin wrapper over meson: `make` builds, `make test` runs every test, `make demo` shows a job.
BUILD ?= build
MESON_OPTS ?=
export POCL_CACHE_DIR ?= $(CURDIR)/$(BUILD)/pocl-cache

.PHONY: all build deps test demo clean

all: build

deps:
	@bash scripts/install-deps.sh

$(BUILD)/build.ninja:
	meson setup $(BUILD) $(MESON_OPTS)

build: deps $(BUILD)/build.ninja
	meson compile -C $(BUILD)

test: build
	meson test -C $(BUILD) --print-errorlogs

demo: build
	@bash scripts/demo.sh $(BUILD)

clean:
	rm -rf $(BUILD)
