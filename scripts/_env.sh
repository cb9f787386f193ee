# Shared set-up for scripts/test, scripts/demo, scripts/bench and scripts/lab.
# Sourced, not run. Installs Debian packages (as root) and the .venv on a fresh machine.
MESHOPS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MESHOPS_APT_PKGS="python3-venv wireguard-go wireguard-tools iptables iproute2 iputils-ping conntrack stun-server postgresql gnupg git procps nebula iperf3 openssh-client"

meshops_apt() {
  local missing=()
  for p in $MESHOPS_APT_PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "note: not root, cannot install: ${missing[*]} (root-only tests will skip)" >&2
    return 0
  fi
  echo "installing Debian packages: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

meshops_venv() {
  local venv="$MESHOPS_ROOT/.venv"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  local stamp="$venv/.meshops-installed"
  if [ ! -f "$stamp" ] || [ "$MESHOPS_ROOT/pyproject.toml" -nt "$stamp" ]; then
    "$venv/bin/pip" install -q --upgrade pip >/dev/null
    "$venv/bin/pip" install -q -e "$MESHOPS_ROOT[test]"
    touch "$stamp"
  fi
  export PATH="$venv/bin:$PATH"
}
