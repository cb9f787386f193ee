"""The README's quick start runs as written on a fresh clone; the install pins exist.

README.md marks each quick-start block with ``<!-- quickstart -->`` (or
``<!-- quickstart:root -->``) on the line before its ```bash fence. The real test
clones this repository into a temp dir (plus the working tree's uncommitted
changes, so what is tested is what would be committed), then runs the blocks, in
order, as one bash script (``set -euxo pipefail``) from the clone's root, with a
fresh ``.venv`` made by the quick start's own first line. The only scaffolding:
git gets an identity (as a user's ``~/.gitconfig`` would give it), and the root
block, which continues the same shell session, is run in a second bash that
re-activates the venv in the directory where the first one ended.

The root block runs only as root (CI is root), in a network namespace and a
mount namespace of its own: its wireguard-go gets a private ``/run/wireguard``,
so it can neither touch this host's interfaces nor collide with another
``mo-acme``. Its loopback is brought up first (scaffolding: every real host has
it up), since the block starts the hub on 127.0.0.1 again.

The quick start enrolls its device with ``meshops agent enroll`` against the
development OpenID provider (``scripts/dev-oidc``: node, npm, openssl) and
completes the login with headless Chromium (``scripts/dev-login``: Playwright,
installed by the quick start, and the system's chromium). Without those tools
the real run skips with the reason; in CI (``CI=true``, where scripts/test
installs them) it fails instead. Whatever the quick start leaves running when
it fails midway (the hub, the provider: their pid files) is stopped by pid.

Not run here: the two commands at the top of the README (``sudo scripts/demo``,
``sudo scripts/test``). CI runs ``scripts/test`` itself, and its e2e tests
(tests/lab) bring up the lab that ``scripts/demo`` shows.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM = "/usr/bin/chromium"  # Debian's, as tests/agent/test_enroll.py uses
# what the quick start starts in the background, by pid file (relative to out/)
PID_FILES = ("hub.pid", "oidc/pid")
SHELL_OPERATORS = (">", ">>", "2>", "&", "&&", ";", "|", "||")
README = ROOT / "README.md"
WORKFLOW = ROOT / "example-repo" / ".github" / "workflows" / "meshops.yml"
PRE_COMMIT = ROOT / "example-repo" / ".pre-commit-config.yaml"
MARKER = re.compile(r"^<!--\s*quickstart(?::(?P<kind>root))?\s*-->\s*$")
PLACEHOLDER = "https://git.example.com/your-org/meshops.git"  # docs/repo-format.md


@dataclass(frozen=True)
class Block:
    kind: str  # "user" or "root"
    line: int  # 1-based line of the opening fence
    text: str


def extract(markdown: str) -> list[Block]:
    """The marked ```bash blocks, in order. A marker without a ```bash fence on the
    next non-blank line, or a fence that is never closed, is an error: a quick start
    must not drop out of the test silently."""
    lines = markdown.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = MARKER.match(lines[i])
        i += 1
        if not m:
            continue
        while i < len(lines) and not lines[i].strip():
            i += 1
        if i >= len(lines) or lines[i].strip() != "```bash":
            raise ValueError(f"README.md:{i}: a quickstart marker must be followed by ```bash")
        start = i
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        if i >= len(lines):
            raise ValueError(f"README.md:{start + 1}: the quickstart block is never closed")
        blocks.append(Block("root" if m.group("kind") else "user", start + 1,
                            "\n".join(body) + "\n"))  # fmt: skip
        i += 1
    return blocks


def bash_fences(markdown: str) -> list[tuple[int, str]]:
    """Every ```bash block as (line of the fence, body)."""
    out = []
    for m in re.finditer(r"^```bash\n(.*?)^```", markdown, flags=re.MULTILINE | re.DOTALL):
        out.append((markdown.count("\n", 0, m.start()) + 1, m.group(1)))
    return out


def commands(block: str) -> list[str]:
    """Shell command lines of a block: continuations joined, comments and blanks dropped."""
    joined = re.sub(r"\s*\\\n\s*", " ", block)
    return [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


# -- the extraction itself ------------------------------------------------------------------


def test_extract_finds_marked_blocks_only():
    md = ("intro\n```bash\nnot me\n```\n<!-- quickstart -->\n\n```bash\na\nb\n```\n"
          "text\n<!-- quickstart:root -->\n```bash\nc\n```\n")  # fmt: skip
    assert extract(md) == [Block("user", 7, "a\nb\n"), Block("root", 13, "c\n")]


@pytest.mark.parametrize("md", [
    "<!-- quickstart -->\ntext\n```bash\na\n```\n",  # marker not followed by the fence
    "<!-- quickstart -->\n```sh\na\n```\n",  # not a bash fence
    "<!-- quickstart -->\n```bash\na\n",  # never closed
    "<!-- quickstart -->\n",  # nothing after it
])  # fmt: skip
def test_extract_refuses_a_marker_that_marks_nothing(md):
    with pytest.raises(ValueError, match="README.md:"):
        extract(md)


def test_commands_joins_continuations_and_drops_comments():
    block = "# c\nmeshops a \\\n    --b c   # why\n\n  x y\n"
    assert commands(block) == ["meshops a --b c   # why", "x y"]


# -- the README's structure -----------------------------------------------------------------

TEXT = README.read_text()
BLOCKS = extract(TEXT)


def test_every_bash_block_is_tested_or_is_the_documented_exception():
    marked = {b.line for b in BLOCKS}
    unmarked = [(line, body) for line, body in bash_fences(TEXT) if line not in marked]
    assert len(unmarked) == 1, f"unmarked ```bash blocks at lines {[u[0] for u in unmarked]}"
    assert [c.split("#")[0].split() for c in commands(unmarked[0][1])] == [
        ["sudo", "scripts/demo"], ["sudo", "scripts/test"]]


def test_quick_start_shape():
    kinds = [b.kind for b in BLOCKS]
    assert kinds.count("user") >= 2 and kinds[-1] == "root" and kinds.count("root") == 1
    first = commands(BLOCKS[0].text)
    assert first[0].startswith("python3 -m venv .venv && .venv/bin/pip install -e .")
    assert first[1] == ". .venv/bin/activate"
    every = [c for b in BLOCKS for c in commands(b.text)]
    assert any(c.startswith("meshops --version") for c in every)
    assert any(c.startswith("meshops plan . --base") for c in every)
    assert any("gpg --homedir gnupg --batch --quiet --import" in c for c in every)
    assert not any(c.startswith("sudo") for c in every)  # root runs as root, in the venv


def test_every_meshops_command_parses():
    """A typo in an option fails here in milliseconds, before the slow run."""
    from reconciler.cli import build_parser

    parser = build_parser()
    for block in BLOCKS:
        for command in commands(block.text):
            if not command.startswith("meshops ") or "$(" in command:
                continue
            argv = []
            for token in shlex.split(command, comments=True)[1:]:
                if token in SHELL_OPERATORS or token.startswith((">", "2>")):
                    break  # a redirection or the end of this command
                argv.append(token)
            if argv == ["--version"]:
                continue
            try:
                parser.parse_args(argv)
            except SystemExit as exc:  # argparse's usage error
                pytest.fail(f"README.md block at line {block.line}: {command!r} ({exc})")


# -- the install source and the pins --------------------------------------------------------


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                          check=False)  # fmt: skip


def pins() -> tuple[tuple[str, str], tuple[str, str]]:
    """((url, rev) of the workflow's pip install, (url, rev) of the pre-commit config)."""
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["validate"]["steps"]
    installs = [s["run"] for s in steps if "pip install" in s.get("run", "")]
    assert len(installs) == 1, installs
    m = re.fullmatch(r'pip install "meshops @ git\+(?P<url>https://\S+?)@(?P<rev>[^"@\s]+)"',
                     installs[0].strip())  # fmt: skip
    assert m, f"not a pinned PEP 508 direct reference: {installs[0]!r}"
    config = yaml.safe_load(PRE_COMMIT.read_text())
    repo = config["repos"][0]
    assert [h["id"] for h in repo["hooks"]] == ["meshops-validate"]
    return (m["url"], m["rev"]), (repo["repo"], str(repo["rev"]))


def test_workflow_and_pre_commit_pin_the_same_commit_of_this_repository():
    (url, rev), (hook_url, hook_rev) = pins()
    assert url == hook_url == PLACEHOLDER
    assert PLACEHOLDER in (ROOT / "docs" / "repo-format.md").read_text()
    assert rev == hook_rev
    assert re.fullmatch(r"[0-9a-f]{40}", rev), "pin a full commit id (no release tag exists)"
    if _git("rev-parse", "--is-shallow-repository").stdout.strip() == "true":
        pytest.skip("shallow clone: the pinned commit may be outside the fetched history")
    assert _git("cat-file", "-e", f"{rev}^{{commit}}").returncode == 0, f"{rev} is not a commit"
    project = _git("show", f"{rev}:pyproject.toml").stdout
    assert re.search(r'^name = "meshops"$', project, re.MULTILINE)
    assert re.search(r'^meshops = "reconciler.cli:run"$', project, re.MULTILINE)
    hooks = yaml.safe_load(_git("show", f"{rev}:.pre-commit-hooks.yaml").stdout)
    assert any(h["id"] == "meshops-validate" and h["entry"] == "meshops validate"
               for h in hooks)  # fmt: skip
    # the commands the workflow runs exist at that commit
    cli = _git("show", f"{rev}:reconciler/cli/repo.py").stdout
    assert '"github"' in cli and "--format" in cli
    assert "--base" in _git("show", f"{rev}:reconciler/cli/plan.py").stdout


# -- the real run ---------------------------------------------------------------------------


def fresh_clone(dst: Path) -> Path:
    """``git clone`` of this repository plus its uncommitted changes and new files."""
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dst)], check=True, capture_output=True)
    diff = _git("diff", "HEAD", "--binary").stdout
    if diff:
        subprocess.run(["git", "-C", str(dst), "apply", "--binary", "-"], input=diff,
                       text=True, check=True, capture_output=True)  # fmt: skip
    for rel in _git("ls-files", "--others", "--exclude-standard").stdout.splitlines():
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dst / rel)
    return dst


def clean_env(home: Path) -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH, no active venv, a git identity."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "GNUPGHOME")
           and not k.startswith(("GIT_", "MESHOPS_"))}  # fmt: skip
    venv_bin = str(Path(sys.prefix) / "bin") if sys.prefix != sys.base_prefix else None
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and p != venv_bin)  # fmt: skip
    gitconfig = home / "gitconfig"
    gitconfig.write_text("[user]\n\tname = README reader\n\temail = reader@example.com\n")
    env["GIT_CONFIG_GLOBAL"] = str(gitconfig)
    return env


@dataclass
class Run:
    clone: Path
    cwd: Path  # where the user blocks left the shell
    output: str
    env: dict[str, str]
    status_before: str
    leftovers: list[str] = field(default_factory=list)


def status(repo: Path) -> str:
    return subprocess.run(["git", "-C", str(repo), "status", "--porcelain"],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip


def missing_tools() -> str | None:
    """Why the enrollment part of the quick start cannot run here, or None."""
    for tool in ("node", "npm", "openssl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/test installs it): scripts/dev-oidc needs it"
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is not installed (scripts/test installs it): scripts/dev-login needs it"
    return None


def stop_leftovers(out: Path) -> list[str]:
    """Stop by pid what the quick start left running (its pid files remain only
    then), after checking that the pid is still that process; what was stopped."""
    stopped = []
    for name, marker in zip(PID_FILES, (b"hub\0serve", b"provider.mjs"), strict=True):
        try:
            pid = int((out / name).read_text())
            if marker not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue  # gone, and the pid is someone else's now
            os.kill(pid, 15)
        except (OSError, ValueError):
            continue
        stopped.append(f"{name} ({pid})")
    return stopped


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    why = missing_tools()
    if why:
        if IN_CI:
            pytest.fail(f"CI must run the README quick start: {why}", pytrace=False)
        pytest.skip(why)
    base = tmp_path_factory.mktemp("readme")
    clone = fresh_clone(base / "meshops")
    env = clean_env(base)
    before = status(clone)
    cwd_file = base / "cwd"
    script = "set -euxo pipefail\n" + "".join(b.text for b in BLOCKS if b.kind == "user")
    script += f'pwd > "{cwd_file}"\n'  # scaffolding: hand the shell's directory on
    proc = subprocess.run(["bash", "-c", script], cwd=clone, env=env, capture_output=True,
                          text=True, timeout=900, check=False)  # fmt: skip
    output = proc.stdout + proc.stderr
    run = Run(clone, Path(cwd_file.read_text().strip()) if cwd_file.exists() else clone,
              output, env, before)  # fmt: skip
    run.leftovers = stop_leftovers(run.cwd)  # nothing, when the quick start cleaned up
    yield run, proc.returncode
    stop_leftovers(run.cwd)  # the root block's hub, if it failed before its kill
    gnupg = run.cwd / "gnupg"
    if gnupg.is_dir():
        subprocess.run(["gpgconf", "--homedir", str(gnupg), "--kill", "gpg-agent"],
                       capture_output=True, check=False)  # fmt: skip


def _tail(text: str, n: int = 80) -> str:
    return "\n".join(text.splitlines()[-n:])


@pytest.mark.slow
def test_quick_start_runs_as_written_on_a_fresh_clone(quickstart):
    run, rc = quickstart
    out = run.output
    assert rc == 0, f"the quick start failed (exit {rc}); last lines:\n{_tail(out)}"
    assert run.cwd == run.clone / "out"
    assert re.search(r"^meshops \d+\.\d+", out, re.MULTILINE), "meshops --version"
    assert "example-repo: valid (2 org(s)" in out
    assert re.search(r"^OK org=acme serial=\d+", out, re.MULTILINE), "manifest verify"
    assert f"state (issued certificates, serials): {run.cwd / 'hub.db'};" in out
    # agent enroll: the development provider, the headless login, the hub's review branch
    assert "DEVELOPMENT OpenID provider" in out
    assert "dev-login: signed in as alice" in out
    assert re.search(r"enrollment of acme/laptop-7 \(owner alice, 10\.10\.0\.\d+, "
                     r"fd10:10::\d+\) awaits review: branch enroll/acme/laptop-7", out), \
        "agent enroll's answer"
    assert "| added | `laptop-7` |" in out, "plan shows the new device"
    merged = subprocess.run(["git", "-C", str(run.cwd / "my-mesh"), "log", "-1", "--format=%H"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert f"dev-wait: https://127.0.0.1:8443 serves {merged}" in out, "the hub serves the merge"
    device = (run.cwd / "my-mesh" / "orgs" / "acme" / "devices" / "laptop-7.yaml").read_text()
    assert "owner: alice" in device and "enrolled by alice" in device
    for key in ("wireguard.key", "identity.key"):
        assert (run.cwd / "device" / key).stat().st_mode & 0o777 == 0o600
        assert (run.cwd / "device" / key).read_text().strip() not in out  # never printed
    # it stopped what it started, by pid
    assert run.leftovers == [], f"the quick start left running: {run.leftovers}"
    # the quick start leaves the checkout clean: all it makes is in git-ignored out/ and .venv/
    assert status(run.clone) == run.status_before


@pytest.mark.slow
@pytest.mark.root
def test_quick_start_root_block_runs_as_root(quickstart):
    run, rc = quickstart
    if rc != 0:
        pytest.fail("the user part of the quick start failed; see the other test")
    ns = f"mo-readme{os.getpid()}"
    root_script = run.cwd.parent / "root.sh"
    root_script.write_text(
        "set -euxo pipefail\n"
        f'. "{run.clone}/.venv/bin/activate"\n'  # scaffolding: the same shell session
        + "".join(b.text for b in BLOCKS if b.kind == "root"))
    os.makedirs("/run/wireguard", exist_ok=True)  # the mount point (wireguard-go makes it too)
    subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
    try:
        inner = (f'ip link set lo up && mount -t tmpfs tmpfs /run/wireguard && '
                 f'exec bash "{root_script}"')
        proc = subprocess.run(
            ["ip", "netns", "exec", ns, "unshare", "--mount", "--propagation", "private",
             "sh", "-c", inner],
            cwd=run.cwd, env=run.env, capture_output=True, text=True, timeout=300, check=False)
    finally:
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                              check=False).stdout.split()  # fmt: skip
        for pid in pids:  # wireguard-go, started by the agent in our namespace
            try:
                os.kill(int(pid), 15)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"root block failed (exit {proc.returncode}):\n{_tail(out)}"
    applied = [int(n) for n in re.findall(r"^(\d+) operation\(s\) applied", out, re.MULTILINE)]
    assert len(applied) == 2 and applied[0] > 0 and applied[1] == 0, applied
    assert "interface mo-acme (up)" in out
    for peer in ("relay-1", "web-1", "laptop-alice"):
        assert re.search(rf"^{peer}\s", out, re.MULTILINE), f"{peer} missing from agent status"


@pytest.mark.slow
def test_the_pinned_requirement_form_installs_from_git(quickstart):
    """pip resolves the workflow's `meshops @ git+URL@REV`, with this repository as
    the URL (the real one is your copy's): the form works and the pin checks out."""
    run, rc = quickstart
    if rc != 0:
        pytest.fail("the quick start's venv was not made; see the other test")
    if _git("rev-parse", "--is-shallow-repository").stdout.strip() == "true":
        pytest.skip("shallow clone: the pinned commit may be outside the fetched history")
    (_, rev), _ = pins()
    proc = subprocess.run(
        [str(run.clone / ".venv/bin/pip"), "install", "--dry-run", "--no-deps", "--quiet",
         # file://localhost/…: the packaging in pip 23 wants a host in a file URL
        "--report", "-", f"meshops @ git+file://localhost{ROOT}@{rev}"],
        env=run.env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, _tail(proc.stdout + proc.stderr)
    import json

    report = json.loads(proc.stdout)
    names = [(i["metadata"]["name"], i["download_info"].get("vcs_info", {}).get("commit_id"))
             for i in report["install"]]  # fmt: skip
    assert names == [("meshops", rev)]
