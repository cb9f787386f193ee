# Shared set-up for scripts/test, scripts/demo, scripts/bench and scripts/lab.
# Sourced, not run. Installs Debian packages (as root) and the .venv on a fresh machine.
MESHOPS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MESHOPS_APT_PKGS="python3-venv wireguard-go wireguard-tools iptables nftables iproute2 iputils-ping conntrack stun-server postgresql gnupg git procps iperf3 openssl chromium nebula openssh-client"
# Node.js for the test OpenID provider: these machines ship NodeSource's nodejs, whose
# bundled npm conflicts with Debian's npm package, so Debian's are installed only when
# no node/npm command exists at all.
MESHOPS_NODE_PKGS="nodejs npm"

meshops_apt() {
  local missing=()
  for p in $MESHOPS_APT_PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    for p in $MESHOPS_NODE_PKGS; do
      dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
  fi
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

# The real OpenID provider the identity tests run (npm oidc-provider 8, tests/oidc/).
# Installed from tests/oidc/package-lock.json into tests/oidc/node_modules (ignored by
# git); nothing is fetched when that install is already current, so offline runs work.
meshops_npm() {
  local dir="$MESHOPS_ROOT/tests/oidc"
  local stamp="$dir/node_modules/.meshops-installed"
  if ! command -v npm >/dev/null; then
    echo "note: npm is missing, the OIDC tests cannot run (CI fails them)" >&2
    return 0
  fi
  if [ -f "$stamp" ] && [ ! "$dir/package-lock.json" -nt "$stamp" ]; then
    return 0
  fi
  echo "installing the test OpenID provider (npm ci in tests/oidc)" >&2
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  touch "$stamp"
}
