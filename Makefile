# Thin wrapper over meson: `make` builds, `make test` runs every test, `make demo` shows a job.
BUILD ?= build
MESON_OPTS ?=
export POCL_CACHE_DIR ?= $(CURDIR)/$(BUILD)/pocl-cache

.PHONY: all build deps test demo fuzz lint format clean image test-image

all: build

deps:
	@bash scripts/install-deps.sh

$(BUILD)/build.ninja:
	meson setup $(BUILD) $(MESON_OPTS)

build: deps $(BUILD)/build.ninja
	meson compile -C $(BUILD)

test: build
	meson test -C $(BUILD) --print-errorlogs

# the container image dropblockd:VERSION that deploy/kubernetes names, built with podman from
# Debian's packages (deploy/container/build-image.sh, docs/deploy.md); test-image builds and checks it
# (tests/test_image.py, suite `image`, left out of `make test`: it takes minutes)
image:
	bash deploy/container/build-image.sh

test-image: build
	meson test -C $(BUILD) --setup image --suite image --print-errorlogs

demo: build
	@bash scripts/demo.sh $(BUILD)

# the style and static checks (test suite `style`): `make format` lays the C sources out as
# .clang-format says, `make lint` runs cppcheck (TIDY=1: clang-tidy too, over compile_commands.json)
format:
	git ls-files '*.c' '*.h' '*.cl' | xargs clang-format-14 -i

lint: build
	bash scripts/lint.sh $(BUILD) $(if $(TIDY),--tidy)
	bash scripts/check-style.sh

# libFuzzer on the frame reader, the request parser/validator and the .npy reader, each for
# FUZZ_SECONDS (default 60), starting from the committed corpus in fuzz/corpus/.
FUZZ_SECONDS ?= 60
fuzz: deps
	@command -v clang >/dev/null || DROPBLOCK_DEPS_EXTRA=clang bash scripts/install-deps.sh
	@[ -f build-fuzz/build.ninja ] || CC=clang meson setup build-fuzz -Dfuzz=true \
	    -Db_sanitize=address,undefined -Db_lundef=false -Dc_args=-fsanitize=fuzzer-no-link
	meson compile -C build-fuzz fuzz/fuzz_frames fuzz/fuzz_request fuzz/fuzz_npy
	@FUZZ_SECONDS=$(FUZZ_SECONDS) bash scripts/fuzz.sh

clean:
	rm -rf $(BUILD) build-fuzz
