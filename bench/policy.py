"""Policy engine benchmark: 10,000 rules over 1,000 services, random realistic requests.

Reports decisions per second on one core and the p99 time per decision, against a reference in the
same run: a naive evaluator that scans every policy and interprets the model objects per request
(what an engine without compilation or a per-target index does). Last stdout line is one JSON object.

    .venv/bin/python bench/policy.py [--services 1000] [--rules 10000] [--requests 200000]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from shared.config.loader import load_policy_set
from shared.config.policyset import PolicySet
from shared.policy.engine import PolicyEngine
from shared.policy.paths import normalize_path
from shared.policy.request import Caller, Request

TD = "bench.meshgate.local"
RESOURCES = ["orders", "items", "users", "carts", "payments", "invoices", "reviews", "search"]
METHODS = ["GET", "GET", "GET", "POST", "PUT", "DELETE", "PATCH"]


Grant = tuple[list[str], str, list[str]]  # callers, resource, methods


def write_policies(folder: Path, services: int, rules: int, rng: random.Random) -> dict[str, list[Grant]]:
    """Write a Mesh, ``services`` Services and AccessPolicies holding ``rules`` rules in all.

    Returns what each target grants, so that traffic can be made of mostly legitimate calls.
    """
    grants: dict[str, list[Grant]] = {}
    names = [f"svc-{i:04d}" for i in range(services)]
    per_service = rules // services
    docs = [f"apiVersion: meshgate/v1\nkind: Mesh\ntrustDomain: {TD}\ndefaultAccess: deny\n"]
    docs += [f"apiVersion: meshgate/v1\nkind: Service\nname: {n}\n" for n in names]
    (folder / "services.yaml").write_text("---\n".join(docs))
    for chunk in range(0, services, 100):
        out = []
        for name in names[chunk : chunk + 100]:
            lines = [
                "apiVersion: meshgate/v1",
                "kind: AccessPolicy",
                f"name: {name}-access",
                f"target: {{service: {name}}}",
                "rules:",
                "  - action: deny",
                '    to: {paths: ["/admin", "/admin/*", "*.php"]}',
            ]
            for _ in range(per_service - 1):
                picked = rng.sample(names, 3)
                callers = ", ".join(picked)
                resource = rng.choice(RESOURCES)
                method_list = sorted(set(rng.sample(METHODS, 2)))
                methods = ", ".join(method_list)
                grants.setdefault(name, []).append((picked, resource, method_list))
                kind = rng.random()
                lines.append("  - action: allow")
                lines.append(f"    from: {{services: [{callers}]}}")
                lines.append(f'    to: {{methods: [{methods}], paths: ["/{resource}", "/{resource}/*"]}}')
                if kind < 0.2:
                    lines.append("    when:")
                    lines.append("      - key: request.headers[x-tenant]")
                    lines.append(f"        values: [tenant-{rng.randrange(20)}, premium-*]")
                elif kind < 0.3:
                    lines.append("    to:")
                    lines.pop(-2)
                    lines.append(f'      paths: ["/{resource}/*"]')
                    lines.append("      headers: [{name: x-api-version, regex: 'v[12]'}]")
            out.append("\n".join(lines) + "\n")
        (folder / f"access-{chunk:04d}.yaml").write_text("---\n".join(out))
    return grants


def make_requests(
    count: int, services: int, grants: dict[str, list[Grant]], rng: random.Random
) -> list[tuple[Caller, str, Request]]:
    """Realistic traffic: 70% calls some rule grants, the rest random callers, methods and resources;
    ids in paths, a few encoding tricks and foreign-trust-domain callers."""
    callers = {f"svc-{i:04d}": Caller.for_service(f"svc-{i:04d}", TD) for i in range(services)}
    foreign = [Caller.for_service(f"svc-{i:04d}", "other.example") for i in range(10)]
    names = list(callers)
    out = []
    for _ in range(count):
        target = rng.choice(names)
        if rng.random() < 0.7 and grants.get(target):
            allowed_callers, resource, methods = rng.choice(grants[target])
            caller = callers[rng.choice(allowed_callers)]
            method = rng.choice(methods)
        else:
            caller = rng.choice(foreign) if rng.random() < 0.05 else callers[rng.choice(names)]
            resource = rng.choice(RESOURCES)
            method = rng.choice(METHODS)
        roll = rng.random()
        if roll < 0.6:
            path = f"/{resource}/{rng.randrange(10**6)}"
        elif roll < 0.8:
            path = f"/{resource}?page={rng.randrange(50)}&limit=20"
        elif roll < 0.9:
            path = f"/{resource}"
        elif roll < 0.95:
            path = rng.choice(["/admin/users", "/%61dmin/x", f"/{resource}/..%2Fadmin", "//admin"])
        else:
            path = f"/{resource}/{rng.randrange(1000)}/details"
        headers = {
            "host": target,
            "user-agent": "bench/1.0",
            "accept": "application/json",
            "x-request-id": f"{rng.getrandbits(64):016x}",
            "x-tenant": f"tenant-{rng.randrange(25)}",
        }
        if rng.random() < 0.5:
            headers["x-api-version"] = rng.choice(["v1", "v2", "v3"])
        out.append((caller, target, Request(method, path, headers)))
    return out


def naive_decide(policies: PolicySet, caller: Caller, target: str, request: Request) -> bool:
    """Reference: scan every policy, interpret model objects per request, no compilation or index."""
    path = normalize_path(request.path)
    if path is None:
        return False
    allowed = None
    for policy in policies.access_policies:
        if policy.target.service != target or policy.mode != "enforce":
            continue
        allowed = allowed or False
        for rule in policy.rules:
            src, op = rule.from_, rule.to
            if src.services and not (caller.trust_domain == TD and caller.service in src.services):
                continue
            if op.methods and request.method not in op.methods:
                continue
            if op.paths and not any(
                fnmatch.fnmatchcase(path, p) if "*" in p else path == p for p in op.paths
            ):
                continue
            if any(
                h.name not in request.headers or not re.fullmatch(h.regex or "", request.headers[h.name])
                for h in op.headers
            ):
                continue
            if rule.when and not any(
                fnmatch.fnmatchcase(request.headers.get("x-tenant", ""), v) for v in rule.when[0].values
            ):
                continue
            if rule.action == "deny":
                return False
            allowed = True
    return bool(allowed) if allowed is not None else policies.mesh.default_access == "allow"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--rules", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        grants = write_policies(folder, args.services, args.rules, rng)
        started = time.perf_counter()
        result = load_policy_set([folder])
        load_s = time.perf_counter() - started
    if result.policy_set is None:
        print("\n".join(str(e) for e in result.errors[:10]), file=sys.stderr)
        return 1
    policies = result.policy_set
    total_rules = sum(len(p.rules) for p in policies.access_policies)
    started = time.perf_counter()
    engine = PolicyEngine(policies)
    compile_s = time.perf_counter() - started
    requests = make_requests(args.requests, args.services, grants, rng)

    decide = engine.decide
    for caller, target, request in requests[:5000]:  # warm-up
        decide(caller, target, request)
    started = time.perf_counter()
    allowed = 0
    for caller, target, request in requests:
        allowed += decide(caller, target, request).allowed
    elapsed = time.perf_counter() - started
    per_s = len(requests) / elapsed

    clock = time.perf_counter_ns
    samples = []
    for caller, target, request in requests[: min(len(requests), 100_000)]:
        t0 = clock()
        decide(caller, target, request)
        samples.append(clock() - t0)
    samples.sort()
    p50 = samples[len(samples) // 2] / 1000
    p99 = samples[int(len(samples) * 0.99)] / 1000
    p999 = samples[int(len(samples) * 0.999)] / 1000

    ref_n = min(len(requests), 2000)
    mismatches = 0
    started = time.perf_counter()
    for caller, target, request in requests[:ref_n]:
        mismatches += (
            naive_decide(policies, caller, target, request) != decide(caller, target, request).allowed
        )
    ref_elapsed = time.perf_counter() - started
    ref_per_s = ref_n / ref_elapsed

    print(f"python {platform.python_version()} on {platform.machine()}, one core, {os.cpu_count()} online")
    print(
        f"policy set: {args.services} services, {total_rules} rules; "
        f"load {load_s:.2f}s, compile {compile_s:.2f}s"
    )
    print(f"engine:    {per_s:,.0f} decisions/s; p50 {p50:.2f} us, p99 {p99:.2f} us, p99.9 {p999:.2f} us")
    print(f"           {allowed / len(requests):.1%} of {len(requests):,} requests allowed")
    print(f"reference: naive scan {ref_per_s:,.0f} decisions/s (engine is {per_s / ref_per_s:,.0f}x)")
    print(f"           naive and engine disagree on {mismatches} of {ref_n} requests")
    print(
        json.dumps(
            {
                "decisions_per_s": round(per_s),
                "p99_us": round(p99, 2),
                "p50_us": round(p50, 2),
                "rules": total_rules,
                "services": args.services,
                "vs_naive_scan": round(per_s / ref_per_s, 1),
                "load_s": round(load_s, 2),
                "mean_us": round(statistics.fmean(samples) / 1000, 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
