#!/usr/bin/env bash
# Lay out what the runtime image holds, from a built kiln binary:
#
#   deploy/stage-rootfs.sh BINARY OUT
#
#   OUT/bin/usr/local/bin/kiln   the binary, debug information stripped
#   OUT/libs/...                 the shared libraries it links (as ldd finds
#                                them) and the dynamic loader
#   OUT/etc/                     passwd and group with the kiln user (65532),
#                                nsswitch.conf, the CA certificates
#   OUT/libs/tmp                 an empty, world-writable /tmp
#
# The Dockerfile's build stage runs it on the release binary; CI runs it on
# the binary its test build made.
set -euo pipefail
binary=${1:?usage: stage-rootfs.sh BINARY OUT}
out=${2:?usage: stage-rootfs.sh BINARY OUT}
[ -x "$binary" ] || { echo "stage-rootfs.sh: '$binary' is not an executable" >&2; exit 1; }
rm -rf "$out"
mkdir -p "$out/bin/usr/local/bin" "$out/libs/tmp" "$out/etc/ssl/certs"
chmod 1777 "$out/libs/tmp"
if command -v objcopy >/dev/null; then
  objcopy --strip-debug "$binary" "$out/bin/usr/local/bin/kiln"
else
  cp "$binary" "$out/bin/usr/local/bin/kiln"
fi
chmod 0755 "$out/bin/usr/local/bin/kiln"
# Every library the binary needs, and the loader (the line without "=>").
ldd "$binary" | awk '/=> \// { print $3 } /^[ \t]*\/.*ld-linux/ { print $1 }' | while read -r lib; do
  mkdir -p "$out/libs$(dirname "$lib")"
  cp -L "$lib" "$out/libs$lib"
done
printf 'root:x:0:0:root:/root:/sbin/nologin\nkiln:x:65532:65532:kiln:/tmp:/sbin/nologin\n' > "$out/etc/passwd"
printf 'root:x:0:\nkiln:x:65532:\n' > "$out/etc/group"
printf 'hosts: files dns\n' > "$out/etc/nsswitch.conf"
for ca in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
  if [ -f "$ca" ]; then
    cp -L "$ca" "$out/etc/ssl/certs/ca-certificates.crt"
    break
  fi
done
[ -s "$out/etc/ssl/certs/ca-certificates.crt" ] || { echo "stage-rootfs.sh: no CA certificates found" >&2; exit 1; }
