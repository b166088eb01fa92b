#!/usr/bin/env bash
# Build the Bento and its OCI image with buildah (no Docker engine needed).
#
#   scripts/build_image.sh [--gpu | --cpu] [--local-base] [--vfs] [--ca-bundle FILE] [--image NAME:TAG]
#   scripts/build_image.sh --cpu --sandbox      # = --local-base --vfs --ca-bundle /etc/ssl/certs/ca-certificates.crt
#
#   --gpu (default)   bentofile.yaml: CUDA base image, torch==2.13.0 CUDA build from PyPI. For GPU nodes.
#   --cpu             bentofile.cpu.yaml: python:3.11-slim base, the torch 2.13.0 CPU wheel carried inside the Bento
#                     (python.wheels) and torch taken out of the requirements file, so nothing fetches the CUDA build.
#   --local-base      no registry for base images: make the base image the Dockerfile asks for (python:3.11-slim)
#                     locally from Debian packages (debootstrap) and tag it with that name, so buildah never pulls.
#   --vfs             buildah's vfs storage driver and chroot isolation, for hosts where overlay mounts or user
#                     namespaces are not allowed (containers, sandboxes). Slower: vfs copies every layer. The images
#                     then live in the vfs store: prefix buildah commands with
#                     CONTAINERS_STORAGE_CONF=build/image/storage-vfs.conf (and use --isolation chroot) to see them.
#   --ca-bundle FILE  mount FILE as the system CA bundle in every build step, for networks whose TLS is re-signed by
#                     a proxy: pip, uv and apt inside the build then trust what the host trusts.
#   --image NAME:TAG  name of the image (default: the Bento's name and version).
#   --bento-only      build the Bento only and print its path (no buildah needed): to inspect its Dockerfile.
#
# Environment: ECGFM_IMAGE_SANDBOX=1 (same as --sandbox); BENTOML_HOME (where the Bento goes; bentoml's default
# otherwise); ECGFM_TORCH_WHEEL (CPU wheel to carry; default: /opt/wheels, else `pip download` from
# download.pytorch.org); ECGFM_ROOTFS (debootstrap root file system for --local-base; default build/image/rootfs;
# made when missing, needs root); BENTOML (bentoml command; default .venv/bin/bentoml).
# The last line printed is the image's name:tag; push it with `buildah push NAME:TAG docker://REGISTRY/NAME:TAG`.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.13.0
PYTHON_TAG=cp311 # python_version "3.11" in both bentofiles
CPU_DIR=build/cpu

variant=gpu
local_base=0
vfs=0
ca_bundle=""
image=""
bento_only=0
sandbox_flags() { local_base=1; vfs=1; ca_bundle=/etc/ssl/certs/ca-certificates.crt; }
[ "${ECGFM_IMAGE_SANDBOX:-0}" = 1 ] && sandbox_flags
while [ $# -gt 0 ]; do
  case "$1" in
    --gpu) variant=gpu ;;
    --cpu) variant=cpu ;;
    --local-base) local_base=1 ;;
    --vfs) vfs=1 ;;
    --ca-bundle) ca_bundle=$2; shift ;;
    --image) image=$2; shift ;;
    --bento-only) bento_only=1 ;;
    --sandbox) sandbox_flags ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "build_image.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

log() { echo "build_image.sh: $*" >&2; }

BENTOML=${BENTOML:-.venv/bin/bentoml}
export BENTOML_DO_NOT_TRACK=true

# vfs + chroot: the storage driver is chosen by a storage.conf named in CONTAINERS_STORAGE_CONF (buildah 1.28 does
# not read STORAGE_DRIVER), the isolation by BUILDAH_ISOLATION; being environment, both also reach the `buildah build`
# that `bentoml containerize` runs. The graph root stays the default one: run `buildah` with the same
# CONTAINERS_STORAGE_CONF to see the images (build/image/storage-vfs.conf).
if [ "$vfs" = 1 ]; then
  mkdir -p build/image
  printf '[storage]\ndriver = "vfs"\nrunroot = "/run/containers/storage"\ngraphroot = "/var/lib/containers/storage"\n' \
    > build/image/storage-vfs.conf
  export CONTAINERS_STORAGE_CONF=$PWD/build/image/storage-vfs.conf BUILDAH_ISOLATION=chroot
fi

# --- the CPU variant's inputs: requirements without torch, and the CPU wheel -----------------------------------------
# The Bento's install.sh installs requirements.txt first and the Bento's wheels after; with torch in the requirements,
# uv would resolve torch from PyPI, i.e. the multi-GB CUDA build. So torch comes only from the wheel.
prepare_cpu_inputs() {
  mkdir -p "$CPU_DIR/wheels"
  grep -v -E '^torch([=<>!~ ;[]|$)' requirements.txt > "$CPU_DIR/requirements.txt"
  local name="torch-${TORCH_VERSION}+cpu-${PYTHON_TAG}-${PYTHON_TAG}-manylinux_2_28_x86_64.whl"
  local wheel=${ECGFM_TORCH_WHEEL:-/opt/wheels/$name}
  if [ ! -f "$CPU_DIR/wheels/$name" ]; then
    if [ -f "$wheel" ]; then
      cp "$wheel" "$CPU_DIR/wheels/$name"
    else
      log "downloading the torch $TORCH_VERSION CPU wheel from download.pytorch.org"
      .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.11 \
        --platform manylinux_2_28_x86_64 --index-url https://download.pytorch.org/whl/cpu \
        -d "$CPU_DIR/wheels" "torch==${TORCH_VERSION}+cpu"
    fi
  fi
  # bentofile.cpu.yaml names this exact file; a different version would silently not be carried.
  [ -f "$CPU_DIR/wheels/$name" ] || { log "missing $CPU_DIR/wheels/$name"; exit 1; }
}

case "$variant" in
  gpu) bentofile=bentofile.yaml ;;
  cpu) bentofile=bentofile.cpu.yaml; prepare_cpu_inputs ;;
esac

# --- the Bento -------------------------------------------------------------------------------------------------------
bento_tag=$("$BENTOML" build -f "$bentofile" --output tag . | sed -n 's/^__tag__://p' | tail -1)
[ -n "$bento_tag" ] || { log "bentoml build printed no tag"; exit 1; }
# bentoml prints through rich, which wraps long paths at the terminal width: make it wide.
bento_dir=$(COLUMNS=100000 "$BENTOML" get "$bento_tag" -o path)
[ -f "$bento_dir/bento.yaml" ] || { log "bentoml get gave '$bento_dir', not a Bento"; exit 1; }
log "Bento $bento_tag in $bento_dir"
if [ "$bento_only" = 1 ]; then
  echo "$bento_dir"
  exit 0
fi
image=${image:-$bento_tag}
command -v buildah >/dev/null || { log "buildah is not installed (apt-get install buildah)"; exit 1; }

# --- the local stand-in base image ------------------------------------------------------------------------------------
# The generated Dockerfile starts FROM python:3.11-slim (CPU) or nvidia/cuda:...-ubuntu24.04 (GPU). Without a
# registry, a Debian bookworm root file system made by debootstrap stands in for python:3.11-slim: same Debian
# release, Python 3.11, with what the Dockerfile expects of that image (python/pip on PATH, pip allowed to install).
base=$(sed -n 's/^FROM \([^ ]*\).*/\1/p' "$bento_dir/env/docker/Dockerfile" | head -1)
# A short name (python:3.11-slim) resolves to docker.io/library/python:3.11-slim (containers' shortnames.conf), and
# a local image tagged with the short name would be localhost/python:3.11-slim, which the build does not look at.
case "$base" in
  */*) qualified_base=$base ;;
  *) qualified_base=docker.io/library/$base ;;
esac
make_local_base() {
  local rootfs=${ECGFM_ROOTFS:-build/image/rootfs}
  local label
  label=$(buildah inspect --type image --format '{{index .OCIv1.Config.Labels "org.ecgfm-serve.stand-in"}}' \
    "$qualified_base" 2>/dev/null || true)
  if [ "$label" = debootstrap-bookworm ]; then
    log "reusing the local stand-in $qualified_base"
    return
  fi
  if [ ! -x "$rootfs/usr/bin/python3" ]; then
    command -v debootstrap >/dev/null || { log "debootstrap is not installed (apt-get install debootstrap)"; exit 1; }
    log "debootstrap of Debian bookworm into $rootfs (about two minutes)"
    if [ -e "$rootfs" ] && ! rmdir "$rootfs" 2>/dev/null; then
      log "$rootfs is not empty but has no usr/bin/python3: not a root file system made here; remove it"
      exit 1
    fi
    # Into $rootfs.partial, renamed when complete: an interrupted run leaves nothing that looks reusable.
    rm -rf "$rootfs.partial"
    mkdir -p "$rootfs.partial"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates bookworm \
      "$rootfs.partial"
    mv "$rootfs.partial" "$rootfs"
    log "debootstrap done at ${SECONDS} s"
  fi
  local context
  context=$(mktemp -d)
  # /dev, /proc and /sys are filled by the container runtime; device nodes in a layer are refused by some runtimes.
  tar -C "$rootfs" --exclude=./dev/* --exclude=./proc/* --exclude=./sys/* --exclude=./var/cache/apt/archives/*.deb \
    -cf "$context/rootfs.tar" .
  cat > "$context/Containerfile" <<'EOF'
FROM scratch
ADD rootfs.tar /
# python:3.11-slim has `python` and `pip` on PATH and lets pip install into the system Python; bookworm's
# python3 has neither (PEP 668 marker), so the Bento's `pip install uv` step would be refused.
RUN rm -f /usr/lib/python3.*/EXTERNALLY-MANAGED \
 && ln -sf /usr/bin/python3 /usr/local/bin/python \
 && ln -sf /usr/bin/pip3 /usr/local/bin/pip
# uv ships its own root certificates; this makes it (and Python's ssl) use the system bundle, which is where
# --ca-bundle mounts the host's during the build.
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
# Kept by the images built on it: says that this image was not built on the official python:3.11-slim.
LABEL org.ecgfm-serve.stand-in=debootstrap-bookworm
CMD ["python3"]
EOF
  buildah build -t "$qualified_base" -f "$context/Containerfile" "$context" >&2
  rm -rf "$context"
  log "stand-in $qualified_base made at ${SECONDS} s"
}

if [ "$local_base" = 1 ]; then
  case "$base" in
    python:3.11*) make_local_base ;;
    *) log "--local-base stands in for python:3.11-slim only; $base (GPU) needs a registry"; exit 2 ;;
  esac
fi

# --- the image --------------------------------------------------------------------------------------------------------
# `bentoml containerize --backend buildah` writes the same Dockerfile into a build context and runs `buildah build`;
# --opt passes build options through (the CA mount), the environment carries storage driver and isolation.
containerize_opts=()
[ -n "$ca_bundle" ] && containerize_opts+=(--opt "volume=$ca_bundle:/etc/ssl/certs/ca-certificates.crt:ro")
"$BENTOML" containerize --backend buildah "${containerize_opts[@]}" --image-tag "$image" "$bento_tag" >&2

log "image built at ${SECONDS} s (since the start of this script):"
buildah images "$image" >&2
# A bare name gets buildah's localhost/ prefix; print what `buildah from` / `buildah push` accept.
echo "$image"
