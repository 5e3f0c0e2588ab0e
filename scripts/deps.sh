#!/bin/sh
# Installs the Debian packages the build, the tests, the demo and the
# benchmarks need — only when one is missing, so a ready machine makes no
# network call. Root is required for the install (as on CI).
set -e
PKGS="apache2 apache2-dev libapr1-dev libaprutil1-dev zlib1g-dev libssl-dev gcc make
      libapache2-mod-perl2 libwww-perl libio-socket-ssl-perl curl openssl
      clang libclang-rt-14-dev wrk nginx"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
        missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "deps: installing$missing"
if [ "$(id -u)" != 0 ]; then
    echo "deps: not root; install these packages first:$missing" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# policy-rc.d keeps the Debian packages from starting their own apache2 or
# nginx on port 80 during the install: our tests start their own servers.
had_policy=0
[ -e /usr/sbin/policy-rc.d ] && had_policy=1
[ $had_policy = 1 ] || printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod +x /usr/sbin/policy-rc.d
apt-get install -y -qq --no-install-recommends $missing
[ $had_policy = 1 ] || rm -f /usr/sbin/policy-rc.d
