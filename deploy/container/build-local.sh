#!/usr/bin/env bash
# Build the laion-ingest image where no container registry is reachable, then run `laion-ingest demo` inside it
# without `podman run` (which needs cgroups this kind of machine may not give).
#
#   sudo deploy/container/build-local.sh [--via buildah|chroot|both]
#
# Steps (each prints "== [n/4] ..."):
#   1. base:  a Debian bookworm rootfs from debootstrap (python3, python3-venv, python-is-python3, ca-certificates),
#             upgraded from the security suite and imported as $BASE_IMAGE. Skipped while that image exists
#             (LAION_REBUILD_BASE=1 remakes it); an interrupted debootstrap is started over.
#   2. pip:   this machine's pip index settings (index-url, extra-index-url over http(s), trusted-host, cert) written
#             to a pip.conf that goes into the build as a secret, with the CA bundle as a second secret.
#   3. image: podman build --isolation=chroot --build-arg PYTHON_IMAGE=$BASE_IMAGE (layers cached by podman).
#   4. demo:  a working container from the image (buildah from), `laion-ingest demo` run in it as the image's user
#             via `buildah run --isolation chroot` and/or a plain chroot into `buildah mount`; its output must show
#             the row count and the probe row as its own nearest neighbour. Container, mounts and binds are removed
#             on exit, also on failure.
#
# Needs root, podman, buildah and debootstrap (apt-get install podman buildah debootstrap).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=${LAION_CONTAINER_WORK:-/var/tmp/laion-container}
SUITE=bookworm
BASE_IMAGE=${LAION_BASE_IMAGE:-localhost/laion-base:$SUITE}
IMAGE=${LAION_IMAGE:-localhost/laion-ingest:dev}
CTR=laion-ingest-demo
SHARDS=3
ROWS=5000
VIA=buildah

while [ $# -gt 0 ]; do
  case $1 in
    --via) VIA=$2; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
case $VIA in buildah|chroot|both) ;; *) echo "--via buildah|chroot|both" >&2; exit 2 ;; esac
[ "$(id -u)" -eq 0 ] || { echo "run as root (debootstrap, chroot and rootful podman storage)" >&2; exit 2; }
for tool in podman buildah debootstrap; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install $tool" >&2; exit 2; }
done
mkdir -p "$WORK"

# -- cleanup: every mount this script makes is recorded here and undone in reverse order ------------------------
MOUNTS=()
cleanup() {
  local i
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    umount -l "${MOUNTS[i]}" 2>/dev/null || true
  done
  MOUNTS=()
  if buildah inspect "$CTR" >/dev/null 2>&1; then
    buildah umount "$CTR" >/dev/null 2>&1 || true
    buildah rm "$CTR" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM  # so that the EXIT trap runs on ^C and kill too
bind() {  # bind SRC DEST [mount options...]: mount and remember
  local src=$1 dest=$2; shift 2
  mkdir -p "$dest"
  mount "$@" "$src" "$dest"
  MOUNTS+=("$dest")
}
rbind() {  # rbind DIR ROOT: the host's DIR tree (e.g. /dev with /dev/pts), as a slave so nothing propagates back
  bind "$1" "$2$1" --rbind
  mount --make-rslave "$2$1"
}
unbind_all() { cleanup; }

step() { echo; echo "== [$1/4] $2"; }

# The Debian mirror apt uses on this machine (first deb822 URIs or one-line deb entry naming a debian archive).
host_mirror() {
  local m
  m=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
        | grep -oE 'https?://[^ ]+/debian/?( |$)' | grep -v security | head -n1 | tr -d ' ')
  echo "${m:-http://deb.debian.org/debian}"
}

# -- 1. base --------------------------------------------------------------------------------------------------
step 1 "base image $BASE_IMAGE"
if podman image exists "$BASE_IMAGE" && [ "${LAION_REBUILD_BASE:-0}" != 1 ]; then
  echo "exists; skipped (LAION_REBUILD_BASE=1 to remake it)"
else
  MIRROR=${DEBIAN_MIRROR:-$(host_mirror)}
  SECURITY=${DEBIAN_SECURITY_MIRROR:-${MIRROR%/debian*}/debian-security}
  ROOTFS=$WORK/rootfs
  if [ ! -f "$ROOTFS/.laion-debootstrap-done" ]; then
    echo "debootstrap --variant=minbase $SUITE from $MIRROR (a few minutes)"
    rm -rf "$ROOTFS"
    debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
      "$SUITE" "$ROOTFS" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 \
      || { tail -n 20 "$WORK/debootstrap.log" >&2; echo "debootstrap failed; log: $WORK/debootstrap.log" >&2; exit 1; }
    touch "$ROOTFS/.laion-debootstrap-done"
  else
    echo "reusing the debootstrapped tree in $ROOTFS"
  fi
  rm -f "$ROOTFS/etc/apt/sources.list"
  cat > "$ROOTFS/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  echo "apt-get upgrade inside the tree (security and point-release updates)"
  cp -L /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
  bind proc "$ROOTFS/proc" -t proc
  rbind /dev "$ROOTFS"
  chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    sh -c 'apt-get update -qq && apt-get upgrade -y -qq && apt-get clean && rm -rf /var/lib/apt/lists/*'
  unbind_all
  # Left from the host by debootstrap; a container engine provides its own.
  rm -f "$ROOTFS/etc/resolv.conf" "$ROOTFS/etc/hostname"
  chroot "$ROOTFS" python -c 'import ensurepip, sys, venv; assert sys.version_info >= (3, 11), sys.version'
  echo "podman import"
  tar --numeric-owner --exclude=./.laion-debootstrap-done -C "$ROOTFS" -c . \
    | podman import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        - "$BASE_IMAGE" >/dev/null
  echo "imported $BASE_IMAGE"
fi

# -- 2. pip settings for the build ------------------------------------------------------------------------------
step 2 "pip index settings for the build"
PIP_CONF=$WORK/pip.conf
CA=${PIP_CERT:-}
pip_value() {  # effective value of a pip setting on this machine (env var wins), empty if unset
  local key=$1 env
  env=PIP_$(echo "$key" | tr 'a-z-' 'A-Z_')
  if [ -n "${!env:-}" ]; then echo "${!env}"; return; fi
  python3 -m pip config get "global.$key" 2>/dev/null || pip config get "global.$key" 2>/dev/null || true
}
[ -n "$CA" ] || CA=$(pip_value cert)
[ -n "$CA" ] || CA=${REQUESTS_CA_BUNDLE:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
{
  echo "# written by deploy/container/build-local.sh from this machine's pip settings"
  echo "[global]"
  index=$(pip_value index-url)
  [ -z "$index" ] || echo "index-url = $index"
  # file:// indexes and find-links point at this machine's disk, which the build cannot see: left out.
  extra=$(pip_value extra-index-url | tr ' ' '\n' | grep -E '^https?://' | tr '\n' ' ' || true)
  [ -z "${extra// /}" ] || echo "extra-index-url = $extra"
  trusted=$(pip_value trusted-host)
  [ -z "$trusted" ] || echo "trusted-host = $trusted"
  [ ! -f "$CA" ] || echo "cert = /run/secrets/pipca"
  echo "timeout = ${PIP_DEFAULT_TIMEOUT:-60}"
} > "$PIP_CONF"
sed 's/^/    /' "$PIP_CONF"
SECRETS=(--secret "id=pipconf,src=$PIP_CONF")
if [ -f "$CA" ]; then
  SECRETS+=(--secret "id=pipca,src=$CA")
  echo "CA bundle: $CA"
fi

# -- 3. image ---------------------------------------------------------------------------------------------------
step 3 "podman build $IMAGE FROM $BASE_IMAGE"
echo "(steps below; full output in $WORK/build.log)"
if ! podman build --isolation=chroot --pull=never \
       --build-arg "PYTHON_IMAGE=$BASE_IMAGE" \
       "${SECRETS[@]}" \
       -t "$IMAGE" "$REPO" > "$WORK/build.log" 2>&1; then
  tail -n 30 "$WORK/build.log" >&2
  echo "podman build failed; log: $WORK/build.log" >&2
  exit 1
fi
sed -nE 's/^(\[[0-9]+\/[0-9]+\] STEP [0-9]+\/[0-9]+: .{0,100}).*/  \1/p; /^Using cache/d' "$WORK/build.log"
podman image inspect "$IMAGE" --format 'image {{.Id}}  user={{.Config.User}}  entrypoint={{.Config.Entrypoint}}'

# -- 4. demo inside the image -----------------------------------------------------------------------------------
step 4 "laion-ingest demo inside $IMAGE (via $VIA)"
check_demo() {  # check_demo LOG: the demo's row count and the probe row found at distance 0
  local log=$1 total=$((SHARDS * ROWS)) probe=$((10000000 + ROWS / 2))
  grep -q "holds $(echo "$total" | sed -E ':a;s/([0-9])([0-9]{3})($|,)/\1,\2\3/;ta') rows" "$log" \
    || { echo "FAIL: no 'holds $total rows' line" >&2; return 1; }
  grep -qE "^│ 1 +│ $probe +│ 0\.0000 " "$log" \
    || { echo "FAIL: rank 1 is not row $probe at distance 0.0000" >&2; return 1; }
  echo "OK: $total rows loaded, row $probe is its own nearest neighbour"
}
fresh_container() {
  cleanup
  buildah from --pull-never --name "$CTR" "$IMAGE" >/dev/null
}
USER_SPEC=$(podman image inspect "$IMAGE" --format '{{.Config.User}}')
WORKDIR=$(podman image inspect "$IMAGE" --format '{{.Config.WorkingDir}}')
DEMO_ARGS=(demo --shards "$SHARDS" --rows "$ROWS")
status=0

if [ "$VIA" = buildah ] || [ "$VIA" = both ]; then
  echo "-- buildah run --isolation chroot --user $USER_SPEC $CTR -- laion-ingest ${DEMO_ARGS[*]}"
  fresh_container
  log=$WORK/demo-buildah.log
  if buildah run --isolation chroot --user "$USER_SPEC" --workingdir "$WORKDIR" "$CTR" -- \
       laion-ingest "${DEMO_ARGS[@]}" 2>&1 | tee "$log" && check_demo "$log"; then :; else status=1; fi
  cleanup
fi

if [ "$VIA" = chroot ] || [ "$VIA" = both ]; then
  fresh_container
  MNT=$(buildah mount "$CTR")
  echo "-- chroot --userspec=$USER_SPEC $MNT laion-ingest ${DEMO_ARGS[*]}"
  bind proc "$MNT/proc" -t proc
  rbind /dev "$MNT"
  rbind /sys "$MNT"  # chdb reads its memory limit from /sys/fs/cgroup
  log=$WORK/demo-chroot.log
  # shellcheck disable=SC2016  # $1/$@ are expanded by the inner sh
  if chroot --userspec="$USER_SPEC" "$MNT" /usr/bin/env -i HOME="$WORKDIR" LANG=C.UTF-8 \
       PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
       PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
       sh -c 'cd "$1" && shift && exec laion-ingest "$@"' sh "$WORKDIR" "${DEMO_ARGS[@]}" 2>&1 | tee "$log" \
     && check_demo "$log"; then :; else status=1; fi
  cleanup
fi

echo
if [ "$status" -eq 0 ]; then
  echo "== done: $IMAGE built from $BASE_IMAGE; laion-ingest demo ran inside it ($VIA)"
else
  echo "== FAILED: the demo inside $IMAGE did not give the expected output (logs in $WORK)" >&2
fi
exit "$status"
