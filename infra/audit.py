"""`make audit`: known vulnerabilities of every pin in the lock files, and what could not be checked.

    .venv/bin/python infra/audit.py requirements-pip.lock requirements-torch.lock requirements.lock

Sources, in order, for each pin (nothing is installed; the pins are read from the locks as written):
  1. pip-audit with PyPI's per-release advisory data (`-s pypi`, /pypi/<name>/<version>/json);
  2. pip-audit with OSV (`-s osv`, api.osv.dev) for the pins PyPI did not answer;
  3. PyPI's project JSON (/pypi/<name>/json), whose `vulnerabilities` list is the latest release's:
     it settles a pin that IS the latest release, and only that.
A pin no source settled is listed as NOT CHECKED with the reason; where a source is unreachable (a
mirror without the per-release JSON, no route to OSV) that is most of them, and the output says so
rather than reporting a clean audit. Every network call has a timeout (AUDIT_HTTP_TIMEOUT, 15 s).

Exit status: 1 when a known vulnerability was found that is not accepted (--ignore ID, matching the
advisory's id or any alias), 2 with --strict when any pin was not checked, else 0.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", flags=re.M)


def read_pins(locks: list[Path]) -> dict[str, str]:
    """{normalised name: version} over the lock files (a local label like +cpu kept: PyPI lacks it)."""
    pins: dict[str, str] = {}
    for lock in locks:
        for name, version in PIN.findall(lock.read_text()):
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def pip_audit(pins: dict[str, str], service: str, timeout: float) -> tuple[dict, dict, str | None]:
    """({name: [vuln ids + fix versions]}, {name: skip reason}, error) from one pip-audit run over `pins`."""
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp) / "pins.txt"
        req.write_text("".join(f"{n}=={v.split('+')[0]}\n" for n, v in sorted(pins.items())))
        out = Path(tmp) / "audit.json"
        cmd = [sys.executable, "-m", "pip_audit", "-r", str(req), "--no-deps", "--disable-pip", "-s", service,
               "-f", "json", "-o", str(out), "--progress-spinner", "off", "--timeout", str(int(timeout))]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(60.0, timeout * 20))
        except subprocess.TimeoutExpired:
            return {}, {}, f"pip-audit -s {service} did not finish in time"
        if not out.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            return {}, {}, f"pip-audit -s {service} failed: {tail[0][:300]}"
        report = json.loads(out.read_text())
    vulns, skipped = {}, {}
    for dep in report.get("dependencies", []):
        name = re.sub(r"[-_.]+", "-", dep["name"]).lower()
        if "skip_reason" in dep:
            skipped[name] = dep["skip_reason"]
        else:
            vulns[name] = [{"ids": [v["id"], *(v.get("aliases") or [])],
                            "fixed": ", ".join(v.get("fix_versions") or []) or "no release"}
                           for v in dep.get("vulns", [])]  # fmt: skip
    return vulns, skipped, None


def latest_release_check(name: str, version: str, timeout: float) -> tuple[list[dict] | None, str]:
    """(vulnerability ids, note) from PyPI's project JSON when `version` is the latest release, else (None, why)."""
    url = f"https://pypi.org/pypi/{name}/json"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            project = json.loads(resp.read().decode())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return None, f"PyPI project JSON unreachable ({exc})"
    latest = project.get("info", {}).get("version")
    if latest != version.split("+")[0]:
        return None, f"not the latest release ({latest}): no source gave per-release data"
    vulns = [{"ids": [v.get("id", "?"), *(v.get("aliases") or [])], "fixed": ", ".join(v.get("fixed_in") or [])
              or "no release"} for v in project.get("vulnerabilities") or []]  # fmt: skip
    return vulns, "latest release"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("locks", nargs="+", type=Path)
    parser.add_argument("--strict", action="store_true", help="exit 2 when any pin could not be checked")
    parser.add_argument("--ignore", action="append", default=[], help="an accepted advisory id (repeatable)")
    args = parser.parse_args()
    timeout = float(os.environ.get("AUDIT_HTTP_TIMEOUT", "15"))
    pins = read_pins(args.locks)
    found: dict[str, list[dict]] = {}
    checked: dict[str, str] = {}
    unchecked = dict.fromkeys(pins, "")
    for service in ("pypi", "osv"):
        todo = {n: pins[n] for n in unchecked}
        if not todo:
            break
        vulns, skipped, error = pip_audit(todo, service, timeout)
        if error:
            print(f"{service}: {error}")
            unchecked = {n: f"{unchecked[n]}; {service}: unreachable".lstrip("; ") for n in unchecked}
            continue
        for name, ids in vulns.items():
            checked[name] = service
            unchecked.pop(name, None)
            if ids:
                found[name] = ids
        for name, why in skipped.items():
            if name in unchecked:
                unchecked[name] = f"{unchecked[name]}; {service}: {why}".lstrip("; ")
        print(f"{service}: {len(vulns)} of {len(todo)} pins checked")
    with ThreadPoolExecutor(max_workers=8) as pool:
        names = list(unchecked)
        late = dict(zip(names, pool.map(lambda n: latest_release_check(n, pins[n], timeout), names), strict=True))
    for name, (ids, note) in late.items():
        if ids is None:
            unchecked[name] = f"{unchecked[name]}; {note}".lstrip("; ")
            continue
        checked[name] = "pypi-latest"
        unchecked.pop(name)
        if ids:
            found[name] = ids
    print(f"pypi-latest: {sum(1 for s in checked.values() if s == 'pypi-latest')} pins are their latest release")

    print(f"\n{len(pins)} pins in {', '.join(str(p) for p in args.locks)}: {len(checked)} checked, "
          f"{len(found)} with known vulnerabilities, {len(unchecked)} NOT CHECKED")  # fmt: skip
    open_ = 0
    for name in sorted(found):
        for v in found[name]:
            accepted = set(v["ids"]) & set(args.ignore)
            open_ += not accepted
            label = f"ACCEPTED ({', '.join(sorted(accepted))})" if accepted else "VULNERABLE"
            print(f"  {label} {name}=={pins[name]}: {' / '.join(v['ids'])} (fixed in {v['fixed']})")
    for name in sorted(unchecked):
        print(f"  NOT CHECKED {name}=={pins[name]}: {unchecked[name]}")
    if open_:
        return 1
    return 2 if args.strict and unchecked else 0


if __name__ == "__main__":
    sys.exit(main())
