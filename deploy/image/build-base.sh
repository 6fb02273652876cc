#!/bin/sh
# build-base.sh OUT_DIR: the two Debian bookworm root filesystems the image is built from,
# made with mmdebstrap from Debian's own packages (no registry needed) and imported into
# podman as localhost/foretell-base:bookworm (runtime) and localhost/foretell-build:bookworm
# (runtime plus the Python build tools). Operators with a registry use debian:bookworm-slim
# instead (deploy/README.md, "Building with Docker").
set -eu
out=${1:-.build/image}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# The runtime: Debian's Python 3.11 (the services' and the jails' interpreter; the sandbox binds
# /usr/bin/python3.11 and its stdlib into each jail), CA certificates, tzdata, and util-linux's
# mount (the worker's entry point remounts its cgroup tree).
runtime="python3.11,python3.11-venv,libpython3.11-stdlib,ca-certificates,tzdata,mount"
# The builder adds what pip needs to build a wheel from source (none is expected; this keeps a
# missing wheel from failing the build); none of it reaches the final stage.
build="$runtime,python3.11-dev,gcc,libc6-dev"
mkdir -p "$out"
for flavour in base build; do
    tar="$out/foretell-$flavour-bookworm.tar"
    if [ ! -s "$tar" ]; then
        packages=$runtime
        [ "$flavour" = build ] && packages=$build
        mmdebstrap --variant=minbase --format=tar --include="$packages" \
            --components=main --aptopt='APT::Install-Recommends "false"' \
            --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
            --dpkgopt='path-exclude=/usr/share/locale/*' \
            bookworm "$tar.tmp" "deb $mirror bookworm main" \
            "deb $mirror bookworm-updates main" \
            "deb http://deb.debian.org/debian-security bookworm-security main"
        mv "$tar.tmp" "$tar"
    fi
    ${PODMAN:-podman} import --change 'CMD ["/bin/sh"]' \
        --message "Debian bookworm ($flavour) from mmdebstrap" \
        "$tar" "localhost/foretell-$flavour:bookworm"
done
