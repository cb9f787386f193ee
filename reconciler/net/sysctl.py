"""IP forwarding of one network namespace: read and turn on ``net.*`` sysctls.

Used by ``reconciler.net.iproute.IPRouteLinks`` (the link manager of the
userspace and kernel backends): ``observe`` reports
``ObservedInterface.forwarding`` and ``apply`` carries out ``SetForwarding``
for relays.

``/proc/sys/net`` is per network namespace: a process sees the values of the
namespace it runs in. So with ``netns=None`` (the agent normally already runs
inside its namespace) the files under ``proc_sys`` are read and written
directly; with ``netns="NS"`` every access goes through
``ip netns exec NS sysctl ...``, which enters the namespace first.

Forwarding counts as on when ``net.ipv4.ip_forward`` is 1 and, if the
interface has a global IPv6 address, ``net.ipv6.conf.all.forwarding`` is 1
too. IPv6 forwarding is only ever touched for interfaces with IPv6
addresses: turning it on makes Linux ignore router advertisements on
interfaces with ``accept_ra=1``, which would break a host's own IPv6
autoconfiguration for nothing.

Errors are translated here: ``BackendError`` with a fix hint naming the
sysctl when the kernel refuses (no privilege, read-only ``/proc/sys`` in a
container), ``BackendUnavailable`` when the namespace is missing.
"""

from __future__ import annotations

import errno
import ipaddress
import subprocess
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from reconciler.errors import BackendError, BackendUnavailable

IPV4_FORWARD = "net.ipv4.ip_forward"
IPV6_FORWARD = "net.ipv6.conf.all.forwarding"
FORWARD_KEYS = (IPV4_FORWARD, IPV6_FORWARD)

Runner = Callable[[list[str]], "subprocess.CompletedProcess[str]"]
_LINK_LOCAL_V6 = ipaddress.ip_network("fe80::/10")


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)


def has_global_v6(addresses: Iterable[str]) -> bool:
    """True when one of the interface addresses is IPv6 and not link-local."""
    for text in addresses:
        ip = ipaddress.ip_interface(text).ip
        if ip.version == 6 and ip not in _LINK_LOCAL_V6:
            return True
    return False


def forwarding_keys(addresses: Iterable[str]) -> tuple[str, ...]:
    """The sysctls a relay with these interface addresses needs set to 1."""
    return FORWARD_KEYS if has_global_v6(addresses) else (IPV4_FORWARD,)


def forwarding_state(values: Mapping[str, str], addresses: Iterable[str]) -> bool | None:
    """Read sysctl values + interface addresses -> observed forwarding.

    ``None`` when ``net.ipv4.ip_forward`` could not be read. A missing IPv6
    key (IPv6 disabled in the kernel) does not count against forwarding.
    """
    if IPV4_FORWARD not in values:
        return None
    keys = [k for k in forwarding_keys(addresses) if k in values]
    return all(values[k].strip() == "1" for k in keys)


def parse_sysctl_output(text: str) -> dict[str, str]:
    """``sysctl KEY...`` output (``key = value`` lines) -> {key: value}."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _hint(key: str, value: str) -> str:
    return (
        f"run the agent as root (CAP_NET_ADMIN and a writable /proc/sys in its namespace), "
        f"or set it yourself: `sysctl -w {key}={value}` and persist it in /etc/sysctl.d/ "
        f"(containers: `--sysctl {key}={value}`)"
    )


class Sysctl:
    """The ``net.*`` sysctls of one network namespace (``None`` = the current one)."""

    def __init__(
        self,
        netns: str | None = None,
        *,
        run: Runner = _run,
        proc_sys: str | Path = "/proc/sys",
    ) -> None:
        self.netns = netns
        self._run = run
        self.proc_sys = Path(proc_sys)

    def path(self, key: str) -> Path:
        return self.proc_sys / key.replace(".", "/")

    def read_command(self, keys: Iterable[str]) -> list[str] | None:
        """The command that reads ``keys`` in the namespace; ``None`` = read files."""
        if self.netns is None:
            return None
        return ["ip", "netns", "exec", self.netns, "sysctl", *keys]

    def read(
        self,
        keys: Iterable[str],
        result: subprocess.CompletedProcess[str] | None = None,
    ) -> dict[str, str]:
        """Values of the ``keys`` that could be read (missing or unreadable ones are
        left out). ``result`` is the already-run ``read_command`` (concurrent reads)."""
        keys = tuple(keys)
        cmd = self.read_command(keys)
        if cmd is None:
            out = {}
            for key in keys:
                try:
                    out[key] = self.path(key).read_text().strip()
                except OSError:
                    continue
            return out
        if result is None:
            result = self._run(cmd)
        values = parse_sysctl_output(result.stdout or "")
        return {k: v for k, v in values.items() if k in keys}

    def write(self, key: str, value: str, *, what: str) -> None:
        """Set ``key`` to ``value``; ``what`` names the change for error messages.
        A missing IPv6 key (IPv6 disabled) is skipped; anything refused raises."""
        if self.netns is None:
            try:
                self.path(key).write_text(value + "\n")
            except FileNotFoundError as exc:
                if key == IPV6_FORWARD:
                    return
                raise BackendError(f"{what}: {self.path(key)} does not exist") from exc
            except PermissionError as exc:
                raise BackendError(
                    f"{what}: permission denied writing {self.path(key)}; {_hint(key, value)}"
                ) from exc
            except OSError as exc:
                reason = "read-only /proc/sys" if exc.errno == errno.EROFS else exc.strerror
                message = f"{what}: cannot write {key} ({reason}); {_hint(key, value)}"
                raise BackendError(message) from exc
            return
        res = self._run(["ip", "netns", "exec", self.netns, "sysctl", "-q", "-w", f"{key}={value}"])
        if res.returncode == 0:
            return
        err = (res.stderr or "").strip()
        if "network namespace" in err:
            raise BackendUnavailable(f"{what}: network namespace {self.netns} is not there: {err}")
        if key == IPV6_FORWARD and ("cannot stat" in err or "No such file" in err):
            return
        if "denied" in err or "Read-only" in err or "not permitted" in err:
            raise BackendError(
                f"{what}: cannot write {key} in netns {self.netns} ({err}); {_hint(key, value)}"
            )
        raise BackendError(f"{what}: sysctl -w {key}={value} in netns {self.netns} failed: {err}")
